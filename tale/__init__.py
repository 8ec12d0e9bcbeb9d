"""Protein function (GO term) prediction: the TALE transformer, DeepGOCNN, naive and alignment baselines."""

# The challenge at a glance: the TL;DR cells and README blocks render these with results.json (`mlkit.results`).
QUESTION = ("How well can GO terms (molecular function, cellular component) be predicted from a protein sequence:"
            " TALE ported, improved at the same cost, and combined with homology search?")
ANSWER = ("The combination (α x the deployed TALE network + (1 - α) x DIAMOND alignment against the whole 2014 "
          "pool where it finds a hit, the network elsewhere; α = {alpha[mf]:g} MF, {alpha[cc]:g} CC, chosen on CAFA3) "
          "reaches Fmax "
          "{fmax[combination][mf]:.4f} (MF) and {fmax[combination][cc]:.4f} (CC). The networks alone, MF / CC: "
          "TALE port {fmax[tale_port][mf]:.4f} / {fmax[tale_port][cc]:.4f}, tale_minor {fmax[tale_minor][mf]:.4f} / "
          "{fmax[tale_minor][cc]:.4f}; term frequencies (naive) {fmax[naive][mf]:.4f} / {fmax[naive][cc]:.4f}.")
BASELINE = ("alignment (DIAMOND against the whole pool, naive where it finds no hit): Fmax "
            "{fmax[alignment_naive][mf]:.4f} (MF), {fmax[alignment_naive][cc]:.4f} (CC); term frequencies (naive): "
            "{fmax[naive][mf]:.4f} (MF), {fmax[naive][cc]:.4f} (CC)")
COST = ("the TALE port trained in {train_minutes[tale_port_mf]:.0f} min (MF) and {train_minutes[tale_port_cc]:.0f} min "
        "(CC) on the 2-core CPU (12,000 sequences, the MF run sharing the cores); shipped predictor: "
        "{predictor[seconds_to_load_and_predict]:.1f} s to load and predict the demo, after building its BLAST "
        "database of the pool once")
