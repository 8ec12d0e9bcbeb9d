"""Doom vs Animal Crossing memes: a fine-tuned pretrained MobileNetV2 with an out-of-distribution guard."""
