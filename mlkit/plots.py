"""The plots every challenge needs: learning curves, confusion matrices, image grids."""
import matplotlib.pyplot as plt
import numpy as np


def learning_curves(histories: dict[str, list[dict]], keys=("train_loss", "val_loss", "val_accuracy"), title=None):
    """One panel per key, one line per named run (history rows as returned by `mlkit.train.fit`)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, history in histories.items():
            rows = [row for row in history if key in row]
            ax.plot([row["epoch"] + 1 for row in rows], [row[key] for row in rows], label=name)
        ax.set(xlabel="epoch", title=key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_heatmap(cm: np.ndarray, classes, normalize: bool = True, title=None, ax=None):
    """Heatmap of a confusion matrix (rows: true class); `normalize` shows row fractions."""
    cm = np.asarray(cm, dtype=float)
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    if ax is None:
        size = max(4.0, 0.45 * len(classes) + 2)
        _, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(shown, cmap="Blues", vmin=0)
    ax.figure.colorbar(image, ax=ax, fraction=0.046)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=90 if len(classes) > 10 else 0)
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    if len(classes) <= 20:
        for i, j in np.ndindex(shown.shape):
            text = f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] > shown.max() / 2 else "black")
    return ax.figure


def image_grid(images, titles=None, columns: int = 8, size: float = 1.6, cmap="gray", title=None):
    """Show uint8 images (N, H, W[, C]) in a grid with optional per-image titles."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * size, rows * (size + 0.25)), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k], cmap=cmap if np.ndim(images[k]) == 2 else None)
            if titles is not None:
                ax.set_title(titles[k], fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
