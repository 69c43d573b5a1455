import json

from tokenmill.pipeline import funnel


def books(run_dir, name, docs_in, docs_kept, config=None):
    """<run>/<name>/_stats.json with document books (and its _config.json when given), as curate writes them."""
    stage = run_dir / name
    stage.mkdir()
    rejected = {f"{name}.rule": docs_in - docs_kept} if docs_in > docs_kept else {}
    (stage / "_stats.json").write_text(json.dumps({
        "stage": name, "docs_in": docs_in, "docs_kept": docs_kept, "bytes_in": 10 * docs_in,
        "bytes_kept": 10 * docs_kept, "rejected": rejected}))
    if config is not None:
        (stage / "_config.json").write_text(json.dumps(config))


def test_stages_follow_their_sources_when_a_stage_rejects_nothing(tmp_path):
    # quality and dedup both take in 90 docs: the counts alone cannot tell which came first
    books(tmp_path, "read", 100, 90, {"inputs": ["a.jsonl"], "reader": {}})
    books(tmp_path, "quality", 90, 90, {"source": "read", "quality": {}})
    books(tmp_path, "dedup", 90, 80, {"source": "quality", "dedup": {}})
    books(tmp_path, "quality_model", 80, 80, {"source": "dedup", "quality_model": {}})
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "_stats.json").write_text(json.dumps({"stage": "tokens", "source_docs": 80}))

    assert funnel.doc_stages(str(tmp_path)) == ["read", "quality", "dedup", "quality_model"]
    rows = funnel.load_funnel(str(tmp_path))
    assert [(r["stage"], r["reason"], r["docs"]) for r in rows] == [
        ("read", "in", 100), ("read", "read.rule", 10), ("read", "kept", 90),
        ("quality", "in", 90), ("quality", "kept", 90),
        ("dedup", "in", 90), ("dedup", "dedup.rule", 10), ("dedup", "kept", 80),
        ("quality_model", "in", 80), ("quality_model", "kept", 80)]

