"""Protein function (GO term) prediction: the TALE transformer, DeepGOCNN, naive and BLAST baselines."""
