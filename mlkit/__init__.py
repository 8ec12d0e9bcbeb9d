"""Small shared kit for the challenge notebooks: data, training, metrics, plots, results."""
import os

# TensorBoard's writer imports TensorFlow when it is installed; keep its C++ start-up logs out of notebooks.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
