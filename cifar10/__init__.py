"""CIFAR-10 at the airbench frontier: small residual networks, their published recipes and cost metrics."""

# The challenge at a glance: the TL;DR cells and README blocks render these with results.json (`mlkit.results`).
QUESTION = ("How accurately can a network trained from scratch classify CIFAR-10, and what do architecture, "
            "augmentation and optimizer buy when every choice is made on a validation split?")
ANSWER = ("Chosen on validation, the {final_model[name]} reaches {final_model[test_accuracy]:.4f} test accuracy; one "
          "airbench96 network {airbench96_test_accuracy[mean]:.4f} ± {airbench96_test_accuracy[std]:.4f} over "
          "{airbench96_test_accuracy[seeds]} seeds (the shipped one, the seed best on validation: "
          "{shipped[tta_accuracy]:.4f}), as accurate as the upstream `airbench` package on the same JPEG images "
          "({upstream_airbench[airbench96][test_accuracy]:.4f}, one seed). At an equal {architecture_epochs} epochs "
          "of the shared recipe, the study picks {best_architecture} on validation.")
BASELINE = "the task's plain CNN (Adam, 10 epochs, no augmentation): {baseline_test_accuracy:.4f} test accuracy"
COST = ("shipped model: {predictor[seconds_to_load_and_predict]:.1f} s to load and predict the demo; one airbench96 "
        "run ({best_recipe[epochs]} epochs) trains in {best_train_seconds:.0f} s on an {best_train_hardware}; on "
        "the 2-core CPU an estimated {airbench96_cpu_hours_estimated:.1f} h (from its measured throughput)")
