"""Knowledge distillation: a frozen ResNet-152 master on Intel Image Classification, compact int8 students."""

# The challenge at a glance: the TL;DR cells and README blocks render these with results.json (`mlkit.results`).
QUESTION = ("Can a student with 50x fewer parameters, 100x smaller on disk and 20x faster than a frozen ResNet-152 "
            "master stay within a point of its accuracy on Intel Image Classification?")
ANSWER = ("Yes: the deployed student, {student}, scores {student_accuracy:.4f} test accuracy against the master's "
          "{master_accuracy:.4f}, with {param_ratio:.0f}x fewer parameters, {size_ratio:.0f}x smaller on disk and "
          "{latency_ratio:.0f}x lower single-image latency ({latency_threads} thread).")
BASELINE = ("the same student trained on the labels alone (no distillation): "
            "{distillation_effect[cnn][cross-entropy]:.4f} test accuracy against the distilled one's "
            "{distillation_effect[cnn][distilled]:.4f} (McNemar p = {distillation_effect[cnn][McNemar p]:.2f})")
COST = ("shipped predictor (master and student): {predictor[seconds_to_load_and_predict]:.1f} s to load and predict "
        "the demo; student latency {models[cnn int8][latency median ms]:.2f} ms per image on one CPU thread")
