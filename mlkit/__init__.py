"""Small shared kit for the challenge notebooks: data, training, metrics, plots, results."""
