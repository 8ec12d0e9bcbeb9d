"""Masked language modelling on WikiText-2: count models, the PyTorch tutorial's transformer, a cloze LSTM."""

# The challenge at a glance: the TL;DR cells and README blocks render these with results.json (`mlkit.results`).
QUESTION = ("How well can a model fill in masked words of WikiText-2, first at the tutorial transformer's cost, "
            "then without limits?")
ANSWER = ("At the tutorial model's cost, the variant chosen on dev ('{same_resources_model}': all step-3 "
          "changes but that one) reaches "
          "{same_resources_ppl:.0f} test perplexity (tutorial {baseline_ppl:.0f}); without limits a cloze LSTM "
          "({neural_best_model}) reaches {neural_best_ppl:.0f}, and the final system {final_ppl:.0f} (top-1 "
          "{final_top1:.3f}): {final_model}.")
BASELINE = ("n-gram counts from both sides of the blank ({count_baseline_model}): {count_baseline_ppl:.0f} test "
            "perplexity, top-1 {count_baseline_top1:.3f}")
COST = ("all runs together trained in {train_minutes_all_runs:.0f} min on the 2-core CPU; shipped predictor: "
        "{predictor[seconds_to_load_and_predict]:.2f} s to load and predict the demo")
