"""Doom vs Animal Crossing memes: a fine-tuned pretrained MobileNetV2 with an out-of-distribution guard."""

# The challenge at a glance: the TL;DR cells and README blocks render these with results.json (`mlkit.results`).
QUESTION = ("Doom or Animal Crossing: how well does a fine-tuned pretrained network separate two kinds of images,"
            " is the gain real, and can it refuse inputs that are neither?")
ANSWER = ("A {finetune_model} of fine-tuned MobileNetV2s scores {finetune_accuracy:.3f} test accuracy "
          "(linear probe {probe_accuracy:.3f}); its out-of-distribution guard separates unseen kinds of images "
          "with AUROC {ood_auroc:.3f}; a third class learnt from 50 images scores {new_class_accuracy:.3f}.")
BASELINE = "a linear probe (logistic regression on frozen MobileNetV2 features): {probe_accuracy:.3f} test accuracy"
COST = "shipped predictor: {predictor[seconds_to_load_and_predict]:.1f} s to load and predict the demo on the CPU"
