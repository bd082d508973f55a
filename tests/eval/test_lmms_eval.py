"""The lmms-eval plugin (``--model vista``): in-process API checks and, marked slow, lmms-eval's CLI
end to end on a tiny local multiple-choice task (single process at retention 1.0 and 0.25, and two
data-parallel processes). Skipped when lmms-eval is not installed (``pip install "vista-llm[lmms]"``).
"""
import glob
import json
import os
import socket
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch

pytest.importorskip("lmms_eval")

from lmms_eval.api.instance import Instance  # noqa: E402

import vista  # noqa: E402
from vista.integrations import lmms_tasks as T  # noqa: E402
from vista.integrations.lmms_eval import VistaLMMS  # noqa: E402
from vista.video import load_video, synthetic_video, write_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = "vista_tiny_mc"
FRAMES = 8
MAX_NEW = 6
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function vista.integrations.lmms_tasks.doc_to_visual
doc_to_text: !function vista.integrations.lmms_tasks.doc_to_text
doc_to_target: !function vista.integrations.lmms_tasks.doc_to_target
process_results: !function vista.integrations.lmms_tasks.process_results
generation_kwargs:
  max_new_tokens: {max_new}
  temperature: 0
  do_sample: false
  until: ["\\n\\n"]
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Five local MP4s, a JSON of questions about them, and a task YAML pointing at it."""
    d = tmp_path_factory.mktemp("lmms_task")
    docs = []
    for i in range(5):
        v = synthetic_video(FRAMES + 2 * i, 64, 64, seed=i)
        path = write_video(d / f"clip{i}.mp4", v.frames)
        docs.append({"video": path, "question": "what color is the ball on the left ?",
                     "options": ["red", "green", "blue", "white"], "answer": "ABCDA"[i]})
    (d / "questions.json").write_text(json.dumps(docs))
    tasks = d / "tasks"
    tasks.mkdir()
    (tasks / f"{TASK}.yaml").write_text(YAML.format(task=TASK, data=d / "questions.json", max_new=MAX_NEW))
    return d


def _docs(task_dir):
    return json.loads((task_dir / "questions.json").read_text())


def _requests(lm, docs, gen=None):
    gen = {"max_new_tokens": MAX_NEW, "temperature": 0, "do_sample": False, "until": ["\n\n"]} if gen is None else gen
    lm.task_dict = {TASK: {"test": docs}}
    return [Instance("generate_until", (T.doc_to_text(d), dict(gen), T.doc_to_visual, i, TASK, "test"), idx=0,
                     metadata={"task": TASK, "doc_id": i, "repeats": 1}) for i, d in enumerate(docs)]


def _texts(results):
    return [r.text if hasattr(r, "text") else r for r in results]


def _direct_answers(model_dir, docs):
    """Stock transformers (no Vista) on the same frames and prompt: the retention-1.0 reference."""
    from transformers import AutoProcessor

    from vista.models import family_of

    family = family_of(model_dir)
    if family == "llava_onevision":
        from transformers import LlavaOnevisionForConditionalGeneration as cls
    else:
        from transformers import Qwen2_5_VLForConditionalGeneration as cls
    model = cls.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    out = []
    for d in docs:
        frames = load_video(d["video"], FRAMES).frames
        msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": T.doc_to_text(d)}]}]
        prompt = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        inp = proc(text=[prompt], videos=[frames], return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inp, max_new_tokens=MAX_NEW, do_sample=False)
        out.append(proc.batch_decode(ids[:, inp["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip())
    return out


# ------------------------------------------------------------------------------------ in process
def test_entry_point_registers_vista():
    eps = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "vista"]
    assert eps, "vista-llm is not installed with its lmms_eval.models entry point (pip install -e .)"
    from lmms_eval.models import get_model

    assert get_model("vista") is VistaLMMS
    assert get_model("vista_llm") is VistaLMMS


@pytest.mark.parametrize("kind", ["llava", "qwen"])
def test_retention_1_equals_transformers(kind, llava, qwen, task_dir, tmp_path):
    model_dir = llava if kind == "llava" else qwen
    docs = _docs(task_dir)[:3]
    lm = VistaLMMS(pretrained=model_dir, retention=1.0, num_frames=FRAMES, device="cpu",
                   stats_path=str(tmp_path / "stats.jsonl"))
    got = _texts(lm.generate_until(_requests(lm, docs)))
    assert got == _direct_answers(model_dir, docs)
    stats = [json.loads(x) for x in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert sorted(s["doc_id"] for s in stats) == [0, 1, 2]
    assert all(s["tokens_before"] == s["tokens_after"] > 0 and s["prune_s"] == 0.0 for s in stats)


def test_pruned_batches_equal_single_requests_and_log_stats(llava, task_dir, tmp_path):
    docs = _docs(task_dir)
    lm = VistaLMMS(pretrained=llava, retention=0.25, num_frames=FRAMES, device="cpu", batch_size=1,
                   stats_path=str(tmp_path / "s1.jsonl"))
    one = _texts(lm.generate_until(_requests(lm, docs)))
    lm.batch_size_per_gpu = 3
    lm.stats_path = str(tmp_path / "s3.jsonl")
    three = _texts(lm.generate_until(_requests(lm, docs)))
    assert one == three
    stats = [json.loads(x) for x in (tmp_path / "s3.jsonl").read_text().splitlines()]
    assert sorted(s["doc_id"] for s in stats) == list(range(len(docs)))
    assert {s["batch_size"] for s in stats} == {3, 2}
    for s in stats:
        T_ = s["frames"][0]
        assert s["tokens_before"] == T_ * 196 + 1  # LLaVA: 196 tokens a frame + one newline a video
        assert s["tokens_after"] == vista.retained_count(T_, 196, 0.25) + 1
        assert s["prune_s"] > 0 and s["rank"] == 0 and s["visuals"] == [docs[s["doc_id"]]["video"]]


def test_scout_and_image_and_text_requests(llava, scout, task_dir, tmp_path):
    from PIL import Image

    docs = _docs(task_dir)[:1]
    lm = VistaLMMS(pretrained=llava, retention=0.25, scout=scout, num_frames=FRAMES, device="cpu",
                   stats_path=str(tmp_path / "s.jsonl"))
    (r,) = lm.generate_until(_requests(lm, docs))
    assert isinstance(r.text, str) and r.token_counts.input_tokens > 0
    (s,) = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert s["scout_s"] > 0 and s["tokens_after"] < s["tokens_before"]
    # an image request and a text-only request go through the stock paths of the same model
    img = Image.fromarray(synthetic_video(1, 64, 64).frames[0])
    lm.task_dict = {"img": {"test": [{"x": 0}]}}
    reqs = [Instance("generate_until", ("what is in the picture ?", {"max_new_tokens": 3}, lambda d: [img], 0, "img", "test"),
                     idx=0, metadata={"task": "img", "doc_id": 0, "repeats": 1}),
            Instance("generate_until", ("say yes", {"max_new_tokens": 3}, lambda d: [], 0, "img", "test"),
                     idx=0, metadata={"task": "img", "doc_id": 0, "repeats": 1})]
    out = lm.generate_until(reqs)
    assert len(out) == 2 and all(isinstance(o.text, str) for o in out)


def test_unsupported_requests_and_bad_arguments(llava, monkeypatch, tmp_path):
    lm = VistaLMMS(pretrained=llava, retention=0.5, num_frames=FRAMES, device="cpu")
    req = Instance("loglikelihood", ("ctx", "A", None, 0, "mc_task", "test"), idx=0,
                   metadata={"task": "mc_task", "doc_id": 0, "repeats": 1})
    with pytest.raises(NotImplementedError, match="loglikelihood.*mc_task"):
        lm.loglikelihood([req])
    with pytest.raises(NotImplementedError, match="multi-round"):
        lm.generate_until_multi_round([req])
    lm.clean()  # lmms-eval frees the model once every request ran
    assert lm.pipe is None and "_model" not in vars(lm)
    with pytest.raises(TypeError, match="unknown model_args.*retension"):
        VistaLMMS(pretrained=llava, retension=0.5)
    with pytest.raises(ValueError, match="pretrained"):
        VistaLMMS()
    with pytest.raises(ValueError, match="retention"):
        VistaLMMS(pretrained=llava, retention=1.5, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        VistaLMMS(pretrained=llava, batch_size="auto", device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2"):
        VistaLMMS(pretrained=llava, device="cpu")


def test_bad_video_stops_or_is_skipped(llava, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    docs = [{"video": str(bad), "question": "what is it ?", "options": ["a", "b"], "answer": "A"}]
    lm = VistaLMMS(pretrained=llava, retention=0.25, num_frames=FRAMES, device="cpu")
    with pytest.raises(ValueError, match=r"vista_tiny_mc doc 0.*broken\.mp4.*skip_bad_videos"):
        lm.generate_until(_requests(lm, docs))
    lm = VistaLMMS(pretrained=llava, retention=0.25, num_frames=FRAMES, device="cpu", skip_bad_videos=True,
                   stats_path=str(tmp_path / "s.jsonl"))
    assert _texts(lm.generate_until(_requests(lm, docs))) == [""]
    assert "error" in json.loads((tmp_path / "s.jsonl").read_text())


# ------------------------------------------------------------------------------- lmms-eval CLI
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_cli(model_dir, task_dir, out, retention, nproc=1):
    """lmms-eval's own CLI on the tiny task; returns (results.json, {doc_id: sample}, stats records)."""
    stats = out / "stats.jsonl"
    args = ["-m", "lmms_eval", "--model", "vista",
            "--model_args", f"pretrained={model_dir},retention={retention},num_frames={FRAMES},stats_path={stats}",
            "--tasks", TASK, "--include_path", str(task_dir / "tasks"), "--output_path", str(out / "res"),
            "--log_samples"]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(_free_port())] + args
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               HF_HOME=str(out / "hf"), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if nproc > 1:
        env["ACCELERATE_USE_CPU"] = "1"  # data parallelism over CPU processes (gloo)
    p = subprocess.run([sys.executable] + args, env=env, cwd=str(out), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (res,) = glob.glob(str(out / "res" / "*" / "*_results.json"))
    (smp,) = glob.glob(str(out / "res" / "*" / f"*_samples_{TASK}.jsonl"))
    samples = {}
    for line in open(smp):
        s = json.loads(line)
        samples[s["doc_id"]] = s
    recs = []
    for f in sorted(glob.glob(str(stats) + "*")):
        recs += [dict(json.loads(x), _file=os.path.basename(f)) for x in open(f).read().splitlines()]
    return json.load(open(res)), samples, recs, p.stdout + p.stderr


@pytest.fixture(scope="module")
def cli_025(llava, task_dir, tmp_path_factory):
    return _run_cli(llava, task_dir, tmp_path_factory.mktemp("cli025"), 0.25)


def _table(log):
    """lmms-eval's printed results table."""
    return "\n".join(line for line in log.splitlines() if line.startswith("|"))


def _resp(sample):
    """The model's answer in a --log_samples record (a string, or [[str]] in other versions)."""
    r = sample["filtered_resps"]
    while isinstance(r, list):
        r = r[0]
    return r


def _accuracy(results):
    return results["results"][TASK]["accuracy,none"]


@pytest.mark.slow
def test_cli_retention_1_equals_transformers(llava, task_dir, tmp_path):
    res, samples, stats, log = _run_cli(llava, task_dir, tmp_path, 1.0)
    docs = _docs(task_dir)
    direct = _direct_answers(llava, docs)
    assert [_resp(samples[i]) for i in range(len(docs))] == direct
    expect = sum(T.process_results(d, [a])["accuracy"] for d, a in zip(docs, direct)) / len(docs)
    assert _accuracy(res) == pytest.approx(expect)
    assert all(s["tokens_before"] == s["tokens_after"] == s["frames"][0] * 196 + 1 for s in stats)
    print(f"\n[retention 1.0, 1 process] answers {direct}\n{_table(log)}")


@pytest.mark.slow
def test_cli_retention_025_logs_pruning_per_sample(cli_025, task_dir):
    res, samples, stats, log = cli_025
    docs = _docs(task_dir)
    assert sorted(samples) == list(range(len(docs)))
    assert sorted(s["doc_id"] for s in stats) == list(range(len(docs)))
    for s in stats:
        assert s["tokens_after"] == vista.retained_count(s["frames"][0], 196, 0.25) + 1
        assert s["tokens_before"] == s["frames"][0] * 196 + 1 and s["prune_s"] > 0
    scored = [T.process_results(docs[i], [_resp(samples[i])])["accuracy"] for i in range(len(docs))]
    assert _accuracy(res) == pytest.approx(sum(scored) / len(docs))
    assert res["config"]["model"] == "vista"
    print(f"\n[retention 0.25, 1 process]\n{_table(log)}")


@pytest.mark.slow
def test_cli_two_processes_equal_one(cli_025, llava, task_dir, tmp_path):
    res1, samples1, stats1, _ = cli_025
    res2, samples2, stats2, log = _run_cli(llava, task_dir, tmp_path, 0.25, nproc=2)
    # each process answered its own shard (one stats file per rank, disjoint, covering every doc)
    by_file = {}
    for s in stats2:
        by_file.setdefault(s["_file"], set()).add(s["doc_id"])
        assert s["_file"].endswith(f".rank{s['rank']}")
    assert len(by_file) == 2, log[-2000:]
    a, b = by_file.values()
    assert a and b and a | b == set(samples1)
    assert a.isdisjoint(b)  # (lmms-eval pads the shorter shard with a copy of its own last request)
    # the merged results equal the single-process run
    assert sorted(samples2) == sorted(samples1)
    for i in samples1:
        assert _resp(samples2[i]) == _resp(samples1[i])
        assert samples2[i]["accuracy"] == samples1[i]["accuracy"]
    assert _accuracy(res2) == _accuracy(res1)
    print(f"\n[retention 0.25, 2 processes] shards {sorted(a)} + {sorted(b)}\n{_table(log)}")
