"""Protein function (GO term) prediction: the TALE transformer, DeepGOCNN, naive and BLAST baselines."""

# The challenge at a glance: the TL;DR cells and README blocks render these with results.json (`mlkit.results`).
QUESTION = ("How well can GO terms (molecular function, cellular component) be predicted from a protein sequence:"
            " TALE ported, improved at the same cost, and against homology search?")
ANSWER = ("The ensemble (networks blended with BLAST, weights chosen on validation) reaches Fmax "
          "{fmax[ensemble][mf]:.3f} (MF) and {fmax[ensemble][cc]:.3f} (CC); the TALE port alone "
          "{fmax[tale_port][mf]:.3f} and {fmax[tale_port][cc]:.3f}.")
BASELINE = ("BLAST nearest homologues: Fmax {fmax[blast][mf]:.3f} (MF), {fmax[blast][cc]:.3f} (CC); term "
            "frequencies (naive): {fmax[naive][mf]:.3f} (MF), {fmax[naive][cc]:.3f} (CC)")
COST = ("each network trains in {train_minutes[tale_minor_mf]:.0f} min (MF) or {train_minutes[tale_minor_cc]:.0f} min "
        "(CC) on the 2-core CPU; shipped predictor: {predictor[seconds_to_load_and_predict]:.1f} s to load and "
        "predict the demo")
