"""Small shared kit for the challenge notebooks: data, training, metrics, plots, results."""
import os

# TensorBoard's writer imports TensorFlow when it is installed; keep its C++ start-up logs out of notebooks
# (no challenge computes with TensorFlow, so its oneDNN option changes nothing here).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
