"""shapes-cnn trains through the shared loop: its folder is checksummed and keeps no training state."""
from t2i.checkpoints.hashing import verify_sha256sums
from t2i.eval.shapes_classifier import load_shapes_classifier, train_shapes_classifier


def test_classifier_folder_is_checksummed_and_leaves_no_training_state(shapes32, tmp_path, one_thread):
    metrics = train_shapes_classifier(shapes32, tmp_path, seed=0, steps=5, batch_size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SHA256SUMS", "config.json", "metrics.json",
                                                          "model.safetensors", "provenance.json"]
    assert verify_sha256sums(tmp_path) == 3  # weights, config, metrics
    assert load_shapes_classifier(tmp_path / "model.safetensors").feat_scale.item() == metrics["feat_scale"]
