"""Masked language modelling on WikiText-2: count models, the PyTorch tutorial's transformer, a cloze LSTM."""
