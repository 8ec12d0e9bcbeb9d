"""Knowledge distillation: a frozen ResNet-152 master on Intel Image Classification, compact int8 students."""

# The challenge at a glance: the TL;DR cells and README blocks render these with results.json (`mlkit.results`).
QUESTION = ("Can a student with 300x fewer parameters than a frozen ResNet-152 master stay within a point of its "
            "accuracy on Intel Image Classification, and what does it save, measured like for like?")
ANSWER = ("The deployed student, {student}, scores {student_accuracy:.4f} test accuracy against the master's "
          "{master_accuracy:.4f} with {param_ratio:.0f}x fewer parameters; int8 against int8 (preprocessing timed, "
          "{latency_threads} thread) it is {like_for_like[int8][latency_ratio]:.0f}x faster and "
          "{like_for_like[int8][size_ratio]:.0f}x smaller, fp32 against fp32 {like_for_like[fp32][latency_ratio]:.0f}x "
          "and {like_for_like[fp32][size_ratio]:.0f}x. The most accurate student, {most_accurate_student[name]}, "
          "scores {most_accurate_student[test accuracy]:.4f}. Every choice was made on validation.")
BASELINE = ("the same student trained on the labels alone (no distillation), 3 seeds: "
            "{distillation_effect[labels only][test int8 mean]:.4f} mean test accuracy against the distilled "
            "{distillation_effect[distilled][test int8 mean]:.4f} (McNemar p = "
            "{distillation_effect[McNemar (same seed, test)][p]:.2f} for the deployed seed)")
COST = ("shipped predictor (master and student): {predictor[seconds_to_load_and_predict]:.1f} s to load and predict "
        "the demo; student latency {models[student int8][latency median ms]:.2f} ms per image on one CPU thread, "
        "resize included")
