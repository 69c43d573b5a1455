"""`tokenmill export`: a ZeRO checkpoint of any stage -> a Hugging Face Llama directory that
transformers loads and that computes the same logits as our model."""
import pytest
import torch
from typer.testing import CliRunner

from tokenmill.flows.cli import app
from tokenmill.training.checkpoint import load_model
from tokenmill.training.export import consolidate

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("stage", [0, 3])
def test_export_loads_in_transformers_with_the_same_logits(stage, trained_run, tmp_path):
    run = trained_run(stage)
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}

    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    ours = load_model(run / "train")  # the weights the job consolidated itself at the end
    ids = torch.tensor([tok("The city council said on Monday that the new plan would")["input_ids"]])
    assert tok.decode(ids[0]) == "The city council said on Monday that the new plan would"
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, ours(ids), atol=1e-4, rtol=0)
    assert tok.eos_token == "<|endoftext|>" and hf.config.eos_token_id == tok.eos_token_id


def test_consolidated_zero_checkpoints_equal_the_trained_weights(trained_run):
    for stage in (2, 3):
        run = trained_run(stage)
        state, cfg = consolidate(run / "train" / "checkpoints")
        trained = load_model(run / "train").state_dict()
        assert cfg == load_model(run / "train").cfg
        assert all(torch.equal(state[k], trained[k]) for k in trained)


def test_export_of_an_untrained_run_says_so(tmp_path):
    result = CliRunner().invoke(app, ["export", "nope", "--output-dir", str(tmp_path), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 1 and "not a curated run directory" in result.output


def test_export_is_atomic_reused_only_for_the_same_checkpoint_and_never_overwrites_other_files(trained_run, tmp_path):
    from tokenmill.training.export import EXPORT_SOURCE, export_run

    run, out = trained_run(0), tmp_path / "hf"
    export_run(run, out)
    made = (out / "model.safetensors").stat().st_mtime_ns
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # the temporary directory was renamed into place
    assert export_run(run, out) == out and (out / "model.safetensors").stat().st_mtime_ns == made  # same source: kept

    # an export made from another model (evaluation used to reuse any export/config.json) is replaced
    (out / EXPORT_SOURCE).write_text('{"checkpoint": "another run"}')
    export_run(run, out)
    assert (out / "model.safetensors").stat().st_mtime_ns != made and "another run" not in (out / EXPORT_SOURCE).read_text()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a tokenmill export"):
        export_run(run, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_pruning_keeps_the_newest_checkpoints_by_step_and_ignores_other_directories(tmp_path):
    from tokenmill.training.checkpoint import kept_steps, prune_checkpoints

    for name in ("step0000008", "step0000012", "step0000100", "step_best", "stepping-notes"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_config.json").write_text("{}")
    prune_checkpoints(tmp_path, keep=2)  # by name, step_best sorted last and the newest was deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step0000012", "step0000100", "step_best", "stepping-notes"]
    assert kept_steps(tmp_path) == {12: "step0000012", 100: "step0000100"}


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling this would create the marker file


def test_checkpoint_loads_run_no_code_from_the_pickle(tmp_path):
    """DeepSpeed's load_checkpoint calls torch.load(weights_only=False); under weights_only_loads (resume and
    export) a checkpoint whose pickle names a callable is refused before it runs."""
    import pickle

    from tokenmill.training.checkpoint import weights_only_loads

    marker, ckpt = tmp_path / "pwned", tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "client": _RunsCode(str(marker))}, ckpt)
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=False)  # what DeepSpeed's checkpoint engine passes
    assert not marker.exists()
    with weights_only_loads():
        torch.save({"module": {"w": torch.ones(2)}, "step": 3}, ckpt)
        assert torch.load(ckpt, weights_only=False)["step"] == 3
