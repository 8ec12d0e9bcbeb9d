"""CIFAR-10 at the airbench frontier: small residual networks, their published recipes and cost metrics."""

# The challenge at a glance: the TL;DR cells and README blocks render these with results.json (`mlkit.results`).
QUESTION = ("How accurately can a network trained from scratch classify CIFAR-10, and what do architecture, "
            "augmentation and optimizer buy on a 2-core CPU?")
ANSWER = ("airbench96, a published recipe ported here and trained on a GPU, reaches "
          "{airbench96_published_length_tta_accuracy[mean]:.4f} test accuracy with its test-time augmentation at the "
          "ported length and {best_test_accuracy_mean:.4f} at {best_recipe[epochs]} epochs ({best_seeds} seeds; the "
          "shipped model is seed 0); the "
          "study's own best recipe, trained on the CPU, reaches {study_recipe_test_accuracy[mean]:.4f} "
          "(TTA: {study_recipe_test_accuracy[tta]}).")
BASELINE = "the task's plain CNN (Adam, 10 epochs, no augmentation): {baseline_test_accuracy:.4f} test accuracy"
COST = ("shipped model: {predictor[seconds_to_load_and_predict]:.1f} s to load and predict the demo; airbench96 "
        "({best_recipe[epochs]} epochs) trains in {best_train_seconds:.0f} s on an {best_train_hardware}; on the "
        "2-core CPU an estimated {airbench96_cpu_hours_estimated[37]:.1f} h at 37 epochs, "
        "{airbench96_cpu_hours_estimated[74]:.1f} h at 74 (the two lengths of PUBLISHED_RUNS)")
