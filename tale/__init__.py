"""Protein function (GO term) prediction: the TALE transformer, DeepGOCNN, naive and BLAST baselines."""

# The challenge at a glance: the TL;DR cells and README blocks render these with results.json (`mlkit.results`).
QUESTION = ("How well can GO terms (molecular function, cellular component) be predicted from a protein sequence:"
            " TALE ported, improved at the same cost, and against homology search?")
ANSWER = ("The ensemble (BLAST where it finds a homologue, the convolutional network elsewhere: blend weight 0, "
          "chosen on validation) reaches Fmax {fmax[ensemble][mf]:.4f} (MF) and {fmax[ensemble][cc]:.4f} (CC); the "
          "TALE port alone {fmax[tale_port][mf]:.4f} (MF, the naive baseline's {fmax[naive][mf]:.4f}) and "
          "{fmax[tale_port][cc]:.4f} (CC).")
BASELINE = ("BLAST nearest homologues: Fmax {fmax[blast][mf]:.4f} (MF), {fmax[blast][cc]:.4f} (CC); term "
            "frequencies (naive): {fmax[naive][mf]:.4f} (MF), {fmax[naive][cc]:.4f} (CC)")
COST = ("each network trains in {train_minutes[tale_minor_mf]:.0f} min (MF) or {train_minutes[tale_minor_cc]:.0f} min "
        "(CC) on the 2-core CPU; shipped predictor: {predictor[seconds_to_load_and_predict]:.1f} s to load and "
        "predict the demo")
