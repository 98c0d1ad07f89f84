"""Training parts on hand-made inputs: augmentation, instance choice, click simulation, loss, optimiser
groups, schedule, the deterministic data stream and its handling of unusable rows."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_model

from dynamite_hf.evaluation.clicker import distance_transform
from dynamite_hf.export import mask_to_rle
from dynamite_hf.training import (
    DynamiteTrainingDataset,
    TrainingOrder,
    corrective_clicks,
    initial_clicks,
    large_scale_jitter,
    mask_losses,
    multistep_schedule,
    parameter_groups,
    select_instances,
)
from dynamite_hf.training.loss import group_logits


def test_jitter_keeps_image_and_masks_aligned_and_marks_the_padding() -> None:
    image = np.zeros((80, 160, 3), dtype=np.uint8)
    image[20:40, 10:30] = 255
    mask = np.zeros((1, 80, 160), dtype=bool)
    mask[0, 20:40, 10:30] = True
    for seed in range(20):
        out, masks, padding = large_scale_jitter(image, mask, 256, np.random.default_rng(seed), 0.5, 0.9)
        assert out.shape == (256, 256, 3) and masks.shape == (1, 256, 256) and padding.shape == (256, 256)
        # the scale never exceeds the target, so the whole image fits: height scaled = width scaled / 2
        valid_rows, valid_cols = np.nonzero(~padding)
        assert valid_rows.max() + 1 <= valid_cols.max() + 1
        assert (out[padding] == 128).all()
        assert not masks[0][padding].any()
        # the bright square and the mask move together, flipped or not
        bright = out[..., 0] > 191  # the square is 255, the padding 128
        assert (bright & masks[0]).sum() / (bright | masks[0]).sum() > 0.7


def test_select_paints_smaller_objects_over_larger_ones_and_drops_small_leftovers() -> None:
    masks = np.zeros((3, 30, 30), dtype=bool)
    masks[0, 0:20, 0:20] = True  # large
    masks[1, 5:15, 5:15] = True  # on top of the large one
    masks[2, 25:28, 25:28] = True  # 9 px: dropped (needs more than 50)
    areas = masks.sum((1, 2))
    rng = np.random.default_rng(0)
    # three present -> int(0.7 * 3) = 2 are kept at random; force all with keep_fraction 1
    instance_map = select_instances(masks, areas, rng, keep_fraction=1.0)
    assert instance_map.max() == 2
    assert (instance_map[5:15, 5:15] == 2).all() and instance_map[0, 0] == 1 and instance_map[26, 26] == 0
    counts = [select_instances(masks[:2], areas[:2], np.random.default_rng(s)).max() for s in range(10)]
    assert set(counts) == {1}  # int(0.7 * 2) = 1 instance kept


def test_initial_clicks_fall_in_their_masks_and_the_background() -> None:
    instance_map = np.zeros((64, 64), dtype=np.int32)
    instance_map[5:30, 5:30] = 1
    instance_map[40:60, 10:50] = 2
    padding = np.zeros((64, 64), dtype=bool)
    padding[:, 56:] = True
    for seed in range(30):
        clicks = initial_clicks(instance_map, padding, np.random.default_rng(seed))
        assert [c.timestamp for c in clicks] == list(range(len(clicks)))
        assert all(c.frame == "model" for c in clicks)
        instances = [c.instance for c in clicks if c.instance is not None]
        assert instances == sorted(instances) and set(instances) == {0, 1}
        for click in clicks:
            value = instance_map[int(click.row), int(click.col)]
            if click.instance is None:
                assert value == 0 and not padding[int(click.row), int(click.col)]
            else:
                assert value == click.instance + 1
        # each instance's first click lies in the distance-transform band beyond max / 1.7
        for index in (0, 1):
            first = next(c for c in clicks if c.instance == index)
            distances = distance_transform(instance_map == index + 1)
            assert distances[int(first.row), int(first.col)] > distances.max() / 1.7


def test_corrective_clicks_target_the_larger_error_and_take_the_owner_from_the_ground_truth() -> None:
    instance_map = np.zeros((60, 60), dtype=np.int32)
    instance_map[10:40, 10:40] = 1
    instance_map[45:55, 45:55] = 2
    padding = np.zeros((60, 60), dtype=bool)
    rng = np.random.default_rng(0)
    # perfect prediction: nothing to correct
    assert corrective_clicks(instance_map, padding, instance_map, 5, rng) == []
    # instance 0 missed entirely: a positive click for it, deep inside it, timestamps from 5
    predicted = instance_map.copy()
    predicted[predicted == 1] = 0
    clicks = corrective_clicks(instance_map, padding, predicted, 5, rng)
    assert 1 <= len(clicks) <= 2 and [c.timestamp for c in clicks] == list(range(5, 5 + len(clicks)))
    distances = distance_transform(instance_map == 1)
    for click in clicks:
        assert click.instance == 0 and distances[int(click.row), int(click.col)] > distances.max() / 2
    # instance 1 predicted over a large background area: a negative click (owner: background)
    predicted = instance_map.copy()
    predicted[0:9, :] = 2
    clicks = corrective_clicks(instance_map, padding, predicted, 0, np.random.default_rng(1))
    assert clicks and all(c.instance is None and c.row < 9 for c in clicks)


def test_group_logits_takes_the_max_per_instance_and_over_the_rest() -> None:
    logits = torch.arange(6, dtype=torch.float32)[:, None, None].expand(6, 2, 2)
    grouped = group_logits(logits, torch.tensor([1, 1, 2, 0, 0, 0]))  # instance 1: queries 0-1, 2: query 2
    assert grouped[:, 0, 0].tolist() == [1.0, 2.0, 5.0]


def test_mask_losses_are_small_for_confident_right_answers_and_large_for_wrong_ones() -> None:
    target = torch.zeros(2, 64, 64)
    target[0, 10:40, 10:40] = 1
    target[1] = 1 - target[0]
    right = (target * 2 - 1) * 20
    right_logits = torch.nn.functional.avg_pool2d(right[None], 4)[0]  # stride 4, as predictions are
    generator = torch.Generator().manual_seed(0)
    bce, dice = mask_losses([right_logits], [target], num_masks=2, num_points=2000, generator=generator)
    wrong_bce, wrong_dice = mask_losses([-right_logits], [target], num_masks=2, num_points=2000, generator=generator)
    assert bce < 0.5 and dice < 0.1
    assert wrong_bce > 5 and wrong_dice > 0.9


def test_parameter_groups_follow_the_original_recipe() -> None:
    model = tiny_model()
    groups = parameter_groups(model, 1e-4, 0.05, 0.1)
    by_id = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert id(named["interactive_transformer.bg_query"]) not in by_id  # frozen
    assert by_id[id(named["interactive_transformer.query_embed"])]["weight_decay"] == 0.05
    assert by_id[id(named["interactive_transformer.level_embed.weight"])]["weight_decay"] == 0.0
    assert by_id[id(named["interactive_transformer.layer_norm.weight"])]["weight_decay"] == 0.0
    backbone = [n for n in named if n.startswith("backbone.")]
    assert backbone and all(by_id[id(named[n])]["lr"] == pytest.approx(1e-5) for n in backbone)
    head = by_id[id(named["interactive_transformer.query_projection.0.weight"])]
    assert head["lr"] == 1e-4 and head["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_schedule_warms_up_then_drops_by_gamma_at_each_milestone() -> None:
    assert multistep_schedule(0, [10, 20], 0.1, 5, 0.5) == 0.5
    assert multistep_schedule(5, [10, 20], 0.1, 5, 0.5) == 1.0
    assert multistep_schedule(10, [10, 20], 0.1, 5, 0.5) == pytest.approx(0.1)
    assert multistep_schedule(25, [10, 20], 0.1, 5, 0.5) == pytest.approx(0.01)
    assert multistep_schedule(3, [10], 0.1, 10, 1.0) == 1.0  # detectron2's default: no warm-up


def _row(sample_id, image_bytes, masks):
    return {
        "sample_id": sample_id,
        "image": {"bytes": image_bytes, "path": f"{sample_id}.png"},
        "height": 64,
        "width": 64,
        "masks": [mask_to_rle(m) for m in masks],
        "areas": [int(m.sum()) for m in masks],
        "categories": [-1] * len(masks),
        "ignore": None,
    }


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def mixed_dataset():
    import datasets

    from dynamite_hf.data.instances import instance_features

    good = np.zeros((64, 64), dtype=bool)
    good[10:50, 10:50] = True
    rows = [
        _row("good", _png(0), [good]),
        _row("corrupt", b"not an image at all", [good]),
        _row("no_masks", _png(1), []),
        _row("empty_mask", _png(2), [np.zeros((64, 64), dtype=bool)]),
    ]
    return datasets.Dataset.from_list(rows, features=instance_features())


def test_unusable_rows_are_skipped_with_a_warning_counted_and_replaced(mixed_dataset) -> None:
    data = DynamiteTrainingDataset(mixed_dataset, 64, seed=0, pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1], min_area=10)
    reasons, expected = [], 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for position in range(8):  # two epochs: every row is met twice
            sample = data[position]
            assert sample.instance_map.max() >= 1 and sample.clicks
            reasons += sample.skipped
            # the bad rows walked over before the permutation reaches the good one (row 0)
            expected += next(k for k in range(4) if data.row_index(position, k) == 0)
    assert sorted(set(reasons)) == ["every instance mask is empty", "no instance masks", "unreadable image"]
    assert len(reasons) == expected == len([w for w in caught if "skipped training row" in str(w.message)])


def test_a_dataset_with_no_usable_row_fails_with_a_clear_error(mixed_dataset) -> None:
    bad_only = mixed_dataset.select([1, 2, 3])
    data = DynamiteTrainingDataset(bad_only, 64, seed=0, pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="could not be used"):
            data[0]


def test_the_sample_stream_is_deterministic_and_split_between_processes(mixed_dataset) -> None:
    data = DynamiteTrainingDataset(mixed_dataset.select([0]), 64, 7, [0, 0, 0], [1, 1, 1], min_area=10)
    first, again = data[3], data[3]
    assert torch.equal(first.pixel_values, again.pixel_values) and first.clicks == again.clicks
    orders = [TrainingOrder(2, rank, 2, start=1) for rank in range(2)]
    batches = [next(iter(order)) for order in orders]
    assert batches == [[4, 5], [6, 7]]  # micro-step 1 of two processes with 2 samples each


def test_the_training_dataset_names_missing_columns() -> None:
    import datasets

    with pytest.raises(ValueError, match="lacks column"):
        DynamiteTrainingDataset(datasets.Dataset.from_dict({"image": [b""]}), 64, 0, [0] * 3, [1] * 3)


def test_training_starts_from_an_original_checkpoint_a_folder_or_imagenet(tmp_path) -> None:
    from reference import CONFIGS, original_state_dict

    from dynamite_hf.training.trainer import DynamiteTrainingArguments, build_model, weights_digest

    if not (Path(__file__).resolve().parents[2] / "shared" / "reference").is_dir():
        pytest.skip("../shared/reference is not present")
    state = original_state_dict(CONFIGS["mit_b0"])
    torch.save({"model": state, "iteration": 1}, tmp_path / "model_final.pth")
    arguments = DynamiteTrainingArguments(
        dataset=["unused"], output_dir=str(tmp_path), from_pretrained=str(tmp_path / "model_final.pth")
    )
    converted = build_model(arguments)
    assert converted.config.backbone_type == "mit"
    key = "sem_seg_head.interactive_transformer.query_embed"
    assert torch.equal(converted.interactive_transformer.query_embed, state[key])
    converted.save_pretrained(tmp_path / "folder")
    arguments.from_pretrained = str(tmp_path / "folder")
    assert weights_digest(build_model(arguments)) == weights_digest(converted)
    imagenet = build_model(DynamiteTrainingArguments(dataset=["unused"], output_dir=str(tmp_path), init="imagenet"))
    from dynamite_hf.training.imagenet import imagenet_weights_path

    reference = torch.load(imagenet_weights_path(), weights_only=True)
    first = next(k for k in reference if k.endswith("weight") and reference[k].ndim == 4)
    assert any(torch.equal(p, reference[first]) for p in imagenet.backbone.parameters())


def _autocast_step(dtype: torch.dtype, num_iterations: int):
    """One training forward of a tiny model under CPU autocast (`dtype`), then the loss as the trainer computes
    it; returns the module, its output, the loss and the dtypes every Linear / Conv2d output had, by module name."""
    from dynamite_hf.training import DynamiteForInteractiveTraining, deep_supervision_loss

    model = tiny_model()
    module = DynamiteForInteractiveTraining(model).train()
    instance_map = np.zeros((64, 64), dtype=np.int32)
    instance_map[8:30, 8:30] = 1
    instance_map[36:60, 20:56] = 2
    padding = np.zeros((64, 64), dtype=bool)
    padding[:, 60:] = True
    rng = np.random.default_rng(0)
    clicks = initial_clicks(instance_map, padding, rng)
    output_dtypes: dict[str, torch.dtype] = {}

    def record(name: str):
        def hook(layer, inputs, output) -> None:
            output_dtypes.setdefault(name, output.dtype)

        return hook

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    hooks = [layer.register_forward_hook(record(name)) for name, layer in layers]
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=dtype):
        outputs = module(torch.randn(1, 3, 64, 64), [instance_map], [padding], [clicks], num_iterations, rng)
    for hook in hooks:
        hook.remove()
    targets = [torch.from_numpy(np.stack([instance_map == 1, instance_map == 2, (instance_map == 0) & ~padding]))]
    loss, logs = deep_supervision_loss(
        outputs.pred_masks, outputs.aux_pred_masks, outputs.query_labels, targets, 3.0, num_points=256
    )
    return module, outputs, loss, output_dtypes, len(clicks)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_under_autocast_the_pixel_decoder_and_the_loss_stay_in_float32(dtype) -> None:
    """As the original under AMP: the deformable-attention pixel decoder in float32, the interactive transformer
    in the low precision, the loss (point sampling, BCE, Dice) in float32."""
    module, outputs, loss, output_dtypes, _ = _autocast_step(dtype, num_iterations=0)
    decoder = {n: d for n, d in output_dtypes.items() if n.startswith("pixel_decoder.")}
    transformer = {n: d for n, d in output_dtypes.items() if n.startswith("interactive_transformer.")}
    assert decoder and set(decoder.values()) == {torch.float32}
    assert transformer and set(transformer.values()) == {dtype}
    assert outputs.pred_masks.dtype == dtype
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    gradients = [p.grad for p in module.parameters() if p.grad is not None]
    assert gradients and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in gradients)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_corrective_click_passes_run_under_autocast(dtype) -> None:
    """The no-grad passes that add corrective clicks run in the training's precision too (bf16 on CPUs and GPUs,
    fp16 on GPUs: the model's code is the same on both)."""
    _, outputs, loss, _, initial = _autocast_step(dtype, num_iterations=2)
    assert len(outputs.clicks[0]) > initial
    assert torch.isfinite(loss)


def test_the_loss_runs_in_float32_whatever_the_predictions_precision() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 16, 16) * 4
    targets = (torch.rand(3, 64, 64) > 0.5).float()
    low = logits.to(torch.bfloat16)
    generator = torch.Generator().manual_seed(1)
    bce, dice = mask_losses([low], [targets], 3.0, num_points=200, generator=generator)
    generator = torch.Generator().manual_seed(1)
    reference = mask_losses([low.float()], [targets], 3.0, num_points=200, generator=generator)
    assert bce.dtype == dice.dtype == torch.float32
    assert torch.equal(bce, reference[0]) and torch.equal(dice, reference[1])
