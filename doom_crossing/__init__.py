"""Doom vs Animal Crossing memes: a fine-tuned pretrained MobileNetV2 with an out-of-distribution guard."""

# The challenge at a glance: the TL;DR cells and README blocks render these with results.json (`mlkit.results`).
QUESTION = ("Doom or Animal Crossing: how well does a fine-tuned pretrained network separate two kinds of images,"
            " is the gain real, and can it refuse inputs that are neither?")
ANSWER = ("A {finetune_model} of fine-tuned MobileNetV2s scores {finetune_accuracy:.3f} test accuracy "
          "(linear probe {probe_accuracy:.3f}; one-sided p = {finetune_vs_probe_split_p_value:.3f} for the gain over 5 "
          "splits); its out-of-distribution guard tells the task's test images from "
          "three other Intel classes with AUROC {ood_auroc:.3f}, and from indoor scenes, CIFAR-10 and digits (none "
          "seen when its method was chosen) with AUROC at least {ood_near_auroc_min:.3f}; with a third class added "
          "from 50 images (nearest class mean, measured with the OOD guard off: the guard rejects part of them), the "
          "seed-0 model labels {new_class_accuracy:.3f} of that class's test images correctly.")
BASELINE = "a linear probe (logistic regression on frozen MobileNetV2 features): {probe_accuracy:.3f} test accuracy"
COST = "shipped predictor: {predictor[seconds_to_load_and_predict]:.1f} s to load and predict the demo on the CPU"
