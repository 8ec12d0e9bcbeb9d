"""The vv-test tasks: fixed models and recipes, and the data fixes that make them train."""

# The challenge at a glance: the TL;DR cells and README blocks render these with results.json (`mlkit.results`).
QUESTION = ("With the models, optimizers and epochs fixed, what fixes to the data (tasks 1, 3), the loop (task 2)"
            " and the loss (task 4) make them train well?")
ANSWER = ("Task 1: {task1_accuracy_mean:.4f} test accuracy (as given {task1_baseline_accuracy:.4f}); task 2's "
          "improved loop {task2_improved_loop_accuracy_mean:.4f} against the original loop's "
          "{task2_original_loop_accuracy_mean:.4f} (both on task 1's fixed data); task 3: {task3_accuracy_mean:.4f} "
          "(as given {task3_baseline_accuracy:.4f}); task 4: {task4_loss} (chosen on validation) keeps the accuracy "
          "at {task4_accuracy:.4f} (plain cross-entropy {task4_ce_accuracy:.4f}) with mean |logit| "
          "{task4_mean_abs_logit:.2f} instead of {task4_ce_mean_abs_logit:.2f}.")
BASELINE = ("each task as given: task 1 {task1_baseline_accuracy:.4f}, task 2 {task2_baseline_accuracy:.4f}, task 3 "
            "{task3_baseline_accuracy:.4f}; task 3 with an augmentation guessed from the test images' look: "
            "{task3_guessed_augmentation_accuracy_mean:.4f}")
COST = ("every run together: {training_hours:.1f} h of training on the 2-core CPU; shipped predictor: "
        "{predictor[seconds_to_load_and_predict]:.2f} s to load and predict the demo")
