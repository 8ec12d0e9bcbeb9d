"""Indoor scene classification from scratch (MIT Indoor67; 15-Scene offline) with a small ResNet."""

# The challenge at a glance: the TL;DR cells and README blocks render these with results.json (`mlkit.results`).
QUESTION = ("How well can a network trained from scratch (no pretraining) classify scenes, measured so that it "
            "holds on any random split?")
ANSWER = ("The scaled recipe (a small ResNet, trained on a GPU) scores {challenge_balanced_accuracy_mean:.3f} ± "
          "{challenge_balanced_accuracy_std:.3f} balanced accuracy on the held-out 20% of each split (seeds "
          "{split_seeds}; there is no separate test set); its CPU-sized version "
          "{cpu_recipe_balanced_accuracy_mean:.3f} ± {cpu_recipe_balanced_accuracy_std:.3f}.")
BASELINE = "the task's plain CNN: {baseline_balanced_accuracy_mean:.3f} balanced accuracy"
COST = ("scaled recipe: trained on an {challenge_trained_on}, about {scaled_recipe_cpu_hours_per_run_estimated:.1f} h "
        "per run (estimated) on the 2-core CPU; shipped predictor: {predictor[seconds_to_load_and_predict]:.1f} s to "
        "load and predict the demo")
