import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mlkit.runtime import seed_everything
from mlkit.train import SWA, EarlyStopping, atomic_save, evaluate, fit, load_half, load_state, save_half, warmup_cosine

EPOCHS = 4


def make_data(n, seed):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 4, generator=generator)
    return TensorDataset(inputs, (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0).long())


TRAIN, VAL = make_data(64, seed=100), make_data(24, seed=101)


def loaders():
    return DataLoader(TRAIN, batch_size=16, shuffle=True), DataLoader(VAL, batch_size=10)


def mlp(batch_norm=False):
    norm = nn.BatchNorm1d(8) if batch_norm else nn.Identity()
    return nn.Sequential(nn.Linear(4, 8), norm, nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))


SCHEDULERS = {
    "step": lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7),
    "plateau": lambda optimizer: torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0),
}


def setup(seed=0, scheduler="step", batch_norm=False):
    seed_everything(seed)
    model = mlp(batch_norm)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, SCHEDULERS[scheduler](optimizer) if scheduler else None


def run(run_dir, seed=0, scheduler="step", train_loader=None, val_loader=None, early_stopping=None, **kwargs):
    model, optimizer, lr_scheduler = setup(seed, scheduler)
    default_train, default_val = loaders()
    history = fit(model, optimizer, nn.CrossEntropyLoss(),
                  default_train if train_loader is None else train_loader,
                  default_val if val_loader is None else val_loader,
                  EPOCHS, run_dir=run_dir, scheduler=lr_scheduler,
                  early_stopping=early_stopping or EarlyStopping(patience=100), progress=False, **kwargs)
    return model, history


class CountingLoader:
    """Wraps a loader; raises on the `crash_on`-th iteration and records the model's weights at each one."""

    def __init__(self, loader, crash_on=None, model=None):
        self.loader, self.crash_on, self.model = loader, crash_on, model
        self.iterations, self.snapshots = 0, []

    def __iter__(self):
        self.iterations += 1
        if self.model is not None:
            self.snapshots.append({k: v.clone() for k, v in self.model.state_dict().items()})
        if self.iterations == self.crash_on:
            raise RuntimeError("simulated crash")
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)


class Unusable:
    def __iter__(self):
        raise AssertionError("a finished run must not iterate its loaders")


def without_timing(history):
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in history]


def assert_same_weights(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


@pytest.mark.parametrize(
    "scheduler, swa",
    [("step", None), ("plateau", None), ("step", SWA(start_epoch=1, lr=0.05, anneal_epochs=1))],
    ids=["steplr", "plateau", "swa"],
)
def test_interrupted_run_resumes_bit_identical(tmp_path, scheduler, swa):
    reference, reference_history = run(tmp_path / "a", scheduler=scheduler, swa=swa)

    crashing = CountingLoader(loaders()[0], crash_on=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "b", scheduler=scheduler, swa=swa, train_loader=crashing)
    assert load_state(tmp_path / "b" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "b" / "history.json").exists()

    counting = CountingLoader(loaders()[0])
    resumed, history = run(tmp_path / "b", seed=1, scheduler=scheduler, swa=swa, train_loader=counting)

    assert counting.iterations == 2
    assert without_timing(history) == without_timing(reference_history)
    assert_same_weights(resumed.state_dict(), reference.state_dict())


def test_finished_run_is_loaded_not_retrained(tmp_path):
    trained, history = run(tmp_path)
    loaded, loaded_history = run(tmp_path, seed=1, train_loader=Unusable(), val_loader=Unusable())
    assert loaded_history == history
    assert_same_weights(loaded.state_dict(), trained.state_dict())
    assert_same_weights(loaded.state_dict(), load_state(tmp_path / "final.pt"))


def test_history_json_marks_run_finished(tmp_path):
    _, history = run(tmp_path)
    record = json.loads((tmp_path / "history.json").read_text())
    assert record == {"finished": True, "history": history}
    assert [row["epoch"] for row in history] == list(range(EPOCHS))


def test_eval_every_scores_validation_on_its_epochs_and_the_last():
    model, optimizer, _ = setup(scheduler=None)
    history = fit(model, optimizer, nn.CrossEntropyLoss(), *loaders(), EPOCHS, eval_every=3, progress=False)
    assert ["val_loss" in row for row in history] == [False, False, True, True]


def test_eval_every_refuses_early_stopping():
    model, optimizer, _ = setup(scheduler=None)
    with pytest.raises(ValueError, match="every epoch"):
        fit(model, optimizer, nn.CrossEntropyLoss(), *loaders(), EPOCHS, eval_every=2,
            early_stopping=EarlyStopping(), progress=False)


def test_early_stopping_waits_patience_epochs():
    stopper = EarlyStopping(patience=2)
    assert [stopper.step(loss) for loss in [1.0, 1.2, 0.9, 0.9, 1.5]] == [False, False, False, False, True]
    assert stopper.best == 0.9


def test_early_stopping_ignores_improvements_within_min_delta():
    stopper = EarlyStopping(patience=1, min_delta=0.1)
    assert not stopper.step(1.0)
    assert not stopper.step(0.85)
    assert stopper.step(0.8)
    assert stopper.best == 0.85


def test_early_stopping_state_dict_round_trip():
    stopper = EarlyStopping(patience=3, min_delta=0.01)
    for loss in [1.0, 0.5, 0.7]:
        stopper.step(loss)
    restored = EarlyStopping()
    restored.load_state_dict(stopper.state_dict())
    assert restored == stopper
    assert restored.step(0.6) == stopper.step(0.6)
    assert restored == stopper


def scripted_val_loss(values):
    losses = iter(values)
    return lambda logits, labels: torch.tensor(next(losses))


def test_fit_stops_early_on_rising_val_loss(tmp_path):
    _, history = run(tmp_path, early_stopping=EarlyStopping(patience=1),
                     eval_loss_fn=scripted_val_loss([1.0, 2.0, 3.0, 4.0]))
    assert [row["val_loss"] for row in history] == [1.0, 2.0]
    assert json.loads((tmp_path / "history.json").read_text())["finished"]


@pytest.mark.parametrize(
    "val_losses, expected_lrs",
    [([1.0] * EPOCHS, [0.1, 0.1, 0.1, 0.05]), ([4.0, 3.0, 2.0, 1.0], [0.1] * EPOCHS)],
    ids=["plateau", "improving"],
)
def test_reduce_lr_on_plateau_follows_val_loss(val_losses, expected_lrs):
    model, optimizer, _ = setup()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
    history = fit(model, optimizer, nn.CrossEntropyLoss(), *loaders(), EPOCHS, scheduler=scheduler,
                  eval_loss_fn=scripted_val_loss(val_losses), progress=False)
    assert [row["lr"] for row in history] == pytest.approx(expected_lrs)


def test_swa_averages_epoch_weights_and_recomputes_batch_norm(tmp_path):
    model, optimizer, _ = setup(batch_norm=True)
    train_loader, val_loader = loaders()
    recorder = CountingLoader(train_loader, model=model)
    history = fit(model, optimizer, nn.CrossEntropyLoss(), recorder, val_loader, EPOCHS, run_dir=tmp_path,
                  swa=SWA(start_epoch=1, lr=0.05), progress=False)

    after_epoch = recorder.snapshots[1:EPOCHS] + [load_state(tmp_path / "last.pt")["model"]]
    final = model.state_dict()
    for name, _ in model.named_parameters():
        expected = torch.stack([weights[name] for weights in after_epoch[1:]]).mean(0)
        torch.testing.assert_close(final[name], expected)
    assert not torch.equal(final["4.weight"], after_epoch[-1]["4.weight"])

    features = model[0](TRAIN.tensors[0])
    torch.testing.assert_close(model[1].running_mean, features.mean(0))
    assert_same_weights(load_state(tmp_path / "final.pt"), final)
    assert history[-1]["swa_val_loss"] == pytest.approx(evaluate(model, val_loader, nn.CrossEntropyLoss())["loss"])


def test_best_checkpoint_holds_weights_of_lowest_val_loss(tmp_path):
    model, optimizer, _ = setup()
    train_loader, val_loader = loaders()
    recorder = CountingLoader(train_loader, model=model)
    fit(model, optimizer, nn.CrossEntropyLoss(), recorder, val_loader, EPOCHS, run_dir=tmp_path,
        eval_loss_fn=scripted_val_loss([3.0, 1.0, 2.0, 4.0]), progress=False)
    assert_same_weights(load_state(tmp_path / "best.pt"), recorder.snapshots[2])


def test_checkpoints_load_with_weights_only(tmp_path):
    run(tmp_path, scheduler="plateau", swa=SWA(start_epoch=2, lr=0.05))
    for name in ["last.pt", "best.pt", "final.pt"]:
        assert torch.load(tmp_path / name, weights_only=True)
    assert not list(tmp_path.glob("*.tmp"))


def test_atomic_save_round_trips_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "state.pt"
    state = {"weights": torch.arange(6.0).reshape(2, 3), "epoch": 3, "history": [{"loss": 0.5}]}
    atomic_save({"old": torch.zeros(1)}, path)
    atomic_save(state, path)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["weights"], state["weights"])
    assert loaded["epoch"] == 3 and loaded["history"] == [{"loss": 0.5}]
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_atomic_save_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    atomic_save({"epoch": 1}, path)

    def crash_mid_write(obj, target):
        with open(target, "wb") as file:
            file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}


def test_evaluate_loss_is_exact_mean_over_uneven_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    inputs, targets = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=2)
    loss_fn = nn.CrossEntropyLoss()

    result = evaluate(model, loader, loss_fn, metrics={"count": lambda logits, labels: len(labels)})

    with torch.no_grad():
        logits = model.eval()(inputs)
    expected = loss_fn(logits, targets).item()
    mean_of_batch_means = sum(loss_fn(logits[i:i + 2], targets[i:i + 2]).item() for i in range(0, 5, 2)) / 3
    assert result["loss"] == pytest.approx(expected, rel=1e-6)
    assert result["loss"] != pytest.approx(mean_of_batch_means, rel=1e-3)
    assert result["accuracy"] == (logits.argmax(1) == targets).float().mean().item()
    assert result["count"] == 5


def test_fit_records_extra_metrics_in_history():
    model, optimizer, _ = setup()
    history = fit(model, optimizer, nn.CrossEntropyLoss(), *loaders(), 2,
                  metrics={"count": lambda logits, labels: len(labels)}, progress=False)
    assert [row["val_count"] for row in history] == [len(VAL)] * 2


def logged_steps(tb_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for path in tb_dir.glob("events.out.tfevents.*"):
        events = EventAccumulator(str(path))
        events.Reload()
        if tag in events.Tags()["scalars"]:
            steps += [event.step for event in events.Scalars(tag)]
    return sorted(steps)


def test_tensorboard_keeps_epochs_before_a_crash_and_logs_the_rest_on_resume(tmp_path):
    with pytest.raises(RuntimeError):
        run(tmp_path, train_loader=CountingLoader(loaders()[0], crash_on=3))
    assert logged_steps(tmp_path / "tb", "train_loss") == [0, 1]

    run(tmp_path)
    for tag in ["lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"]:
        assert logged_steps(tmp_path / "tb", tag) == list(range(EPOCHS)), tag


def test_clip_grad_norm_bounds_every_step():
    seed_everything(0)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(50.0)  # huge logits: the unclipped gradient norm is far above the bound
    start = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    one_batch = DataLoader(TRAIN, batch_size=len(TRAIN))
    fit(model, optimizer, nn.CrossEntropyLoss(), one_batch, DataLoader(VAL, batch_size=24), 1,
        clip_grad_norm=0.01, progress=False)
    step = nn.utils.parameters_to_vector(model.parameters()).detach() - start  # lr 1: the step is the gradient
    assert 0.0099 < step.norm() <= 0.01 + 1e-6


def test_fit_passes_tuple_targets_to_the_loss_and_scores_accuracy_on_the_labels():
    inputs, labels = TRAIN.tensors
    extra = torch.randn(len(labels), 3)
    seen = []

    def loss_fn(logits, targets):
        batch_labels, batch_extra = targets
        seen.append(batch_extra.shape)
        return nn.functional.cross_entropy(logits, batch_labels)

    train = DataLoader(list(zip(inputs, zip(labels, extra))), batch_size=16)
    model = mlp()
    history = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, train, loaders()[1], epochs=1,
                  eval_loss_fn=nn.CrossEntropyLoss(), progress=False)
    assert seen and all(shape == (16, 3) for shape in seen)
    assert 0 <= history[0]["train_accuracy"] <= 1


def test_half_precision_checkpoint_halves_floats_and_loads_back(tmp_path):
    model = mlp(batch_norm=True)
    path = save_half(model, tmp_path / "sub" / "model.pt")
    saved = torch.load(path, weights_only=True)
    assert saved["0.weight"].dtype == torch.float16 and saved["1.num_batches_tracked"].dtype == torch.long
    restored = load_half(path)
    assert restored["0.weight"].dtype == torch.float32
    assert torch.allclose(restored["0.weight"], model.state_dict()["0.weight"], atol=1e-3)


def test_warmup_cosine_rises_linearly_then_decays_to_zero():
    factor = warmup_cosine(4, 20)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == 1.0 and factor(12) == pytest.approx(0.5) and factor(20) == pytest.approx(0.0, abs=1e-12)
    assert factor(30) == pytest.approx(0.0, abs=1e-12)  # clamped: no second rise past the end
    decay = [factor(s) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
