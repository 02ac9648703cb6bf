"""--init-layer-map: a student of another depth starts from chosen layers of its checkpoint."""
import pytest
import torch

from fullyqt.depth.feature import saved_layers
from fullyqt.errors import UserError
from tests.conftest import TINY, TRAIN, USER_DIR, build_model, cli, train

SIX = [*TINY[:-5], "--encoder-layers", "2", "--decoder-layers", "3", "--share-all-embeddings"]


def _layers(state, stack, i):
    head = f"{stack}.layers.{i}."
    return {k[len(head):]: v for k, v in state.items() if k.startswith(head)}


@pytest.fixture(scope="module")
def deep(toy_data, tmp_path_factory):
    """A 2-3 layer model's state saved as a checkpoint (not trained: only the layout counts)."""
    model, _, args = build_model(toy_data[1], "--quant-bits", "8", arch_args=SIX)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(i)  # every tensor tells its origin
    path = tmp_path_factory.mktemp("depth") / "deep.pt"
    torch.save({"args": args, "model": model.state_dict(), "extra_state": {},
                "optimizer_history": [{"num_updates": 0}], "last_optimizer_state": None}, path)
    return path, model.state_dict()


def _student(toy_data, deep, *flags):
    return build_model(toy_data[1], "--quant-bits", "8", "--finetune-from-model", deep[0],
                       *flags)[0]


@pytest.mark.parametrize("flags,encoder,decoder", [
    (["--encoder-layers", "2", "--decoder-layers", "1", "--init-layer-map", "auto"],
     [1, 2], [3]),  # evenly spaced: ends on the top layer
    (["--encoder-layers", "3", "--decoder-layers", "1", "--init-layer-map", "auto:1"],
     [1, 2, 2], [1]),  # a deeper encoder repeats layers
    (["--encoder-layers", "2", "--decoder-layers", "2", "--init-layer-map", "2,1:3,2"],
     [1, 2], [3, 2]),  # a stack whose count agrees is loaded as it is, whatever the map says
])
def test_each_layer_starts_from_the_one_the_map_picks(toy_data, deep, flags, encoder,
                                                       decoder):
    student = _student(toy_data, deep, *flags)
    student.load_state_dict(dict(deep[1]))  # strict: every key of the student is filled
    got = student.state_dict()
    for stack, picks in (("encoder", encoder), ("decoder", decoder)):
        assert len(getattr(student, stack).layers) == len(picks)
        for i, pick in enumerate(picks):
            mine, theirs = _layers(got, stack, i), _layers(deep[1], stack, pick - 1)
            assert mine.keys() == theirs.keys()
            assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    key = "encoder.embed_tokens.weight"
    assert torch.equal(got[key], deep[1][key])


def test_a_student_of_its_own_depth_loads_its_own_checkpoint(toy_data, deep):
    student = _student(toy_data, deep, "--decoder-layers", "1", "--init-layer-map", "auto")
    student.load_state_dict(dict(deep[1]))
    own = {k: v.clone() for k, v in student.state_dict().items()}
    again = _student(toy_data, deep, "--decoder-layers", "1", "--init-layer-map", "auto")
    again.load_state_dict(own)  # a resume: the layers keep their numbers
    assert all(torch.equal(again.state_dict()[k], v) for k, v in own.items())
    assert saved_layers(own, "", "decoder") == 1


def test_bad_maps_are_one_line(toy_data, deep):
    student = _student(toy_data, deep, "--decoder-layers", "1", "--init-layer-map", "auto:1,2")
    with pytest.raises(UserError, match="the decoder map has 2 entries for a model with 1"):
        student.load_state_dict(dict(deep[1]))
    student = _student(toy_data, deep, "--decoder-layers", "1", "--init-layer-map", "auto:4")
    with pytest.raises(UserError, match="decoder checkpoint layer 4 does not exist; the checkpoint has 3"):
        student.load_state_dict(dict(deep[1]))
    with pytest.raises(UserError, match="--init-layer-map applies to --finetune-from-model"):
        build_model(toy_data[1], "--init-layer-map", "auto")
    without = build_model(toy_data[1], "--quant-bits", "8", "--finetune-from-model", deep[0],
                          "--decoder-layers", "1")[0]
    with pytest.raises(RuntimeError, match="Unexpected key"):
        without.load_state_dict(dict(deep[1]))  # other depths stay refused without the option


@pytest.mark.slow
def test_fairseq_train_starts_a_shallow_decoder_student_and_resumes_it(toy_data, tmp_path):
    train(toy_data[1], tmp_path / "t", *SIX, "--quant-bits", "8", "--max-update", "2",
          "--disable-validation")
    flags = [*TINY, "--quant-bits", "8", "--decoder-layers", "1", "--init-layer-map", "auto",
             "--finetune-from-model", tmp_path / "t" / "checkpoint_last.pt",
             "--disable-validation"]
    train(toy_data[1], tmp_path, *flags, "--max-update", "2")
    cli("fairseq-train", toy_data[1], "--save-dir", tmp_path, *TRAIN, *flags,
               "--user-dir", USER_DIR, "--max-update", "4")
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 4
    assert saved_layers(state["model"], "", "decoder") == 1
    bad = cli("fairseq-train", toy_data[1], "--save-dir", tmp_path / "b", "--user-dir",
              USER_DIR, *TINY, "--init-layer-map", "3:x", "--max-update", "1", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "fairseq-train: error: --init-layer-map: got '3:x'; allowed:")
