"""`metalab serve`: the HTTP API through FastAPI's test client, on tiny checkpoints trained here on
synthetic class folders (a ProtoNet, a MAML with its fixed 3-way head, a Relation Network that needs
equal shots), and the command line."""

import base64
import importlib.util
import os
import socket
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_own_data import make_folder

import metalab
from helpers import REPO, run
from metalab.config import Config
from metalab.train import train

pytest.importorskip("fastapi", reason="metalab serve needs the serve extra: pip install 'metalab[serve]'")
pytest.importorskip("multipart", reason="multipart uploads need python-multipart (the serve extra)")
with warnings.catch_warnings():  # starlette's note that it prefers httpx2 to httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from metalab.serve import EpisodeStore, Limits, create_app  # noqa: E402
from metalab.serve.model import ApiError, Episode  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
CLASSES = ["class00", "class01", "class02", "class03"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Checkpoints of a ProtoNet (30 episodes), a MAML and a Relation Network (2 iterations each),
    all 3-way on a folder of 9 synthetic classes, and the folder."""
    root = tmp_path_factory.mktemp("serve")
    data = make_folder(root / "data", classes=9, per_class=5)
    common = dict(
        benchmark="folder",
        data_dir=str(data),
        ways=3,
        shots=1,
        queries=2,
        val_classes=3,
        test_classes=3,
        meta_batch=2,
        val_every=0,
        threads=1,
        test_tasks=2,
    )
    for name, extra in (("protonet", dict(iterations=30)), ("maml", dict(iterations=2, inner_lr=0.4))):
        train(Config(algorithm=name, **common, **extra), root / name, progress=False, log=lambda _: None)
    train(
        Config(algorithm="relation", iterations=2, **common),
        root / "relation",
        progress=False,
        log=lambda _: None,
    )
    return {name: root / name / "checkpoint.pt" for name in ("protonet", "maml", "relation")} | {"data": data}


def b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def png_bytes(size=(20, 20), value=0) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def support_files(data: Path, classes=CLASSES, shots=(1, 2, 1, 1)) -> dict[str, list[Path]]:
    return {name: sorted((data / name).iterdir())[:k] for name, k in zip(classes, shots)}


def episode_json(files: dict[str, list[Path]]) -> dict:
    return {"classes": [{"name": n, "images": [b64(p) for p in paths]} for n, paths in files.items()]}


def client(checkpoint, **limits) -> TestClient:
    return TestClient(create_app(checkpoint, Limits(**limits)))


def test_model_description(trained):
    proto = client(trained["protonet"]).get("/model").json()
    assert proto["algorithm"] == "protonet" and proto["family"] == "metric" and proto["backbone"] == "conv4"
    assert proto["input_shape"] == [1, 28, 28] and proto["iteration"] == 30
    assert proto["image"] == {"image_size": 28, "channels": 1, "invert": False, "trained_invert": False}
    assert proto["classes"] == {"fixed_ways": None, "trained_ways": 3, "equal_shots": False}
    assert proto["inner_steps"] is None and proto["limits"]["max_queries"] == 100
    maml = client(trained["maml"]).get("/model").json()
    assert (
        maml["family"] == "optimization" and maml["classes"]["fixed_ways"] == 3 and maml["inner_steps"] >= 1
    )
    assert client(trained["relation"]).get("/model").json()["classes"]["equal_shots"] is True


def test_labels_and_probabilities_are_those_of_metalab_predict(trained, tmp_path):
    """The same support and query files give the same answers through the API (JSON and multipart)
    as through `metalab predict`, to the last bit; episodes can be read back and deleted."""
    data = trained["data"]
    files = support_files(data)
    support = tmp_path / "support"
    for name, paths in files.items():
        (support / name).mkdir(parents=True)
        for p in paths:
            (support / name / p.name).write_bytes(p.read_bytes())
    queries = [sorted((data / n).iterdir())[3] for n in CLASSES] + [sorted((data / "class05").iterdir())[0]]
    expected = metalab.predict(trained["protonet"], support, queries)
    assert sum(p.label == n for p, n in zip(expected, CLASSES)) >= 3  # a model that learned something

    api = client(trained["protonet"])
    made = api.post("/episodes", json=episode_json(files))
    assert made.status_code == 201, made.text
    episode = made.json()
    assert episode["classes"] == [{"name": n, "examples": k} for n, k in zip(CLASSES, (1, 2, 1, 1))]
    answer = api.post(
        f"/episodes/{episode['id']}/predict",
        json={"images": [b64(q) for q in queries], "names": [str(q) for q in queries]},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["classes"] == CLASSES and body["episode"] == episode["id"]
    for got, want in zip(body["predictions"], expected, strict=True):
        assert got["query"] == want.query and got["label"] == want.label
        assert got["probabilities"] == want.probabilities  # exactly: one code path
        ranked = [r["class"] for r in got["ranked"]]
        assert ranked[0] == want.label and sorted(ranked) == CLASSES
        assert [r["probability"] for r in got["ranked"]] == sorted(want.probabilities.values(), reverse=True)

    # Multipart: file fields named by their class (in any order: classes are sorted by name).
    uploads = [(n, (p.name, p.read_bytes(), "image/png")) for n in reversed(CLASSES) for p in files[n]]
    made = api.post("/episodes", files=uploads)
    assert made.status_code == 201, made.text
    answer = api.post(
        f"/episodes/{made.json()['id']}/predict",
        files=[("query", (q.name, q.read_bytes(), "image/png")) for q in queries],
    )
    assert answer.status_code == 200, answer.text
    got = answer.json()["predictions"]
    assert [g["query"] for g in got] == [q.name for q in queries]
    assert [g["probabilities"] for g in got] == [p.probabilities for p in expected]

    assert api.get(f"/episodes/{episode['id']}").json()["classes"][1] == {"name": "class01", "examples": 2}
    assert api.delete(f"/episodes/{episode['id']}").status_code == 204
    gone = api.post(f"/episodes/{episode['id']}/predict", json={"images": [b64(queries[0])]})
    assert gone.status_code == 404 and "unknown, deleted, or expired" in gone.json()["detail"]


def test_maml_with_steps_matches_metalab_predict(trained, tmp_path):
    data = trained["data"]
    files = support_files(data, CLASSES[:3], (1, 1, 2))
    for name, paths in files.items():
        (tmp_path / name).mkdir()
        for p in paths:
            (tmp_path / name / p.name).write_bytes(p.read_bytes())
    queries = [sorted((data / n).iterdir())[4] for n in CLASSES[:3]]
    expected = metalab.predict(trained["maml"], tmp_path, queries, steps=3)
    api = client(trained["maml"])
    episode = api.post("/episodes", json=episode_json(files)).json()["id"]
    answer = api.post(f"/episodes/{episode}/predict", json={"images": [b64(q) for q in queries], "steps": 3})
    assert [p["probabilities"] for p in answer.json()["predictions"]] == [p.probabilities for p in expected]
    default = api.post(f"/episodes/{episode}/predict", json={"images": [b64(q) for q in queries]}).json()
    assert [p["probabilities"] for p in default["predictions"]] == [
        p.probabilities for p in metalab.predict(trained["maml"], tmp_path, queries)
    ]


def test_errors_are_json_with_a_message_and_the_right_status(trained):
    data = trained["data"]
    image = b64(sorted((data / "class00").iterdir())[0])
    api = client(
        trained["protonet"],
        max_request_bytes=60_000,
        max_image_bytes=20_000,
        max_image_pixels=100 * 100,
        max_classes=4,
        max_examples_per_class=3,
        max_queries=4,
    )

    def post(path, status, fragment, **kwargs):
        r = api.post(path, **kwargs)
        assert r.status_code == status, r.text
        detail = r.json()["detail"]
        assert isinstance(detail, str) and fragment in detail, detail
        return r

    def support(*classes):
        return {"classes": [{"name": n, "images": imgs} for n, imgs in classes]}

    two = support(("a", [image]), ("b", [image]))
    episode = api.post("/episodes", json=two).json()["id"]
    # 413: over a limit.
    post(
        "/episodes",
        413,
        "request body of",
        content=b"x" * 70_000,
        headers={"content-type": "application/json"},
    )
    post("/episodes", 413, "over the limit of 20,000", json=support(("a", [image]), ("b", ["A" * 28_000])))
    big = base64.b64encode(png_bytes((200, 60))).decode()
    post(
        "/episodes",
        413,
        "is 200 x 60 pixels, more than the limit of 10,000",
        json=support(("a", [big]), ("b", [image])),
    )
    post("/episodes", 413, "5 classes, over the limit of 4", json=support(*[(c, [image]) for c in "abcde"]))
    post(
        "/episodes",
        413,
        "class 'a' has 4 images, over the limit of 3",
        json=support(("a", [image] * 4), ("b", [image])),
    )
    post(
        f"/episodes/{episode}/predict",
        413,
        "5 query images, over the limit of 4",
        json={"images": [image] * 5},
    )
    # 422: a bad image or a bad request.
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode()
    post("/episodes", 422, "cannot read image b[0]", json=support(("a", [image]), ("b", [broken])))
    post(
        f"/episodes/{episode}/predict", 422, "cannot read image q", json={"images": [broken], "names": ["q"]}
    )
    post("/episodes", 422, "image a[0] is not valid base64", json=support(("a", ["%%%"]), ("b", [image])))
    post("/episodes", 422, "bad request: classes.0.images: Field required", json={"classes": [{"name": "a"}]})
    post("/episodes", 422, "not valid JSON", content=b"{", headers={"content-type": "application/json"})
    post("/episodes", 422, "class 'b' has no images", json=support(("a", [image]), ("b", [])))
    post("/episodes", 422, "class names must be distinct", json=support(("a", [image]), ("a", [image])))
    post(
        "/episodes",
        422,
        "needs at least 2 classes to choose between; it has 1 (a)",
        json=support(("a", [image])),
    )
    post("/episodes", 422, "non-empty name", json=support(("a", [image]), (" ", [image])))
    post(f"/episodes/{episode}/predict", 422, "no query images", json={"images": []})
    post(
        f"/episodes/{episode}/predict",
        422,
        "steps applies to learners with an inner loop; protonet has none",
        json={"images": [image], "steps": 2},
    )
    post(
        f"/episodes/{episode}/predict",
        422,
        "2 names for 1 images",
        json={"images": [image], "names": ["x", "y"]},
    )
    post("/episodes", 422, "form field 'a' is not a file", data={"a": "text"}, files={"b": ("b.png", b"x")})
    post("/episodes", 415, "not text/plain", content=b"hello", headers={"content-type": "text/plain"})
    # 404: unknown episodes.
    post("/episodes/nope/predict", 404, "no episode 'nope'", json={"images": [image]})
    assert api.delete("/episodes/nope").status_code == 404 and api.get("/episodes/nope").status_code == 404
    # 409: a support set this learner cannot take.
    maml = client(trained["maml"])
    r = maml.post("/episodes", json=two)
    assert r.status_code == 409 and "is a 3-way maml model" in r.json()["detail"]
    assert "so the support set needs exactly 3 classes; it has 2 (a, b)" in r.json()["detail"]
    three = maml.post("/episodes", json=support(("a", [image]), ("b", [image]), ("c", [image]))).json()["id"]
    r = maml.post(f"/episodes/{three}/predict", json={"images": [image], "steps": 1000})
    assert r.status_code == 422 and "steps must be <= 100, got 1000" in r.json()["detail"]
    r = maml.post(f"/episodes/{three}/predict", data={"steps": "many"}, files={"q": ("q.png", b"x")})
    assert r.status_code == 422 and "steps must be an integer" in r.json()["detail"]
    uneven = support(("a", [image, image]), ("b", [image]))
    r = client(trained["relation"]).post("/episodes", json=uneven)
    assert (
        r.status_code == 409 and "relation needs the same number of support images in every class" in r.text
    )
    assert "it has a: 2, b: 1" in r.json()["detail"]
    assert client(trained["relation"]).post("/episodes", json=two).status_code == 201


def test_the_page_and_the_openapi_description_are_served(trained):
    api = client(trained["protonet"])
    page = api.get("/")
    assert page.status_code == 200 and '<canvas id="pad"' in page.text and "/static/app.js" in page.text
    for name in ("app.js", "style.css"):
        assert api.get(f"/static/{name}").status_code == 200
    assert "swagger" in api.get("/docs").text.lower()
    paths = api.get("/openapi.json").json()["paths"]
    assert set(paths) == {"/model", "/episodes", "/episodes/{episode_id}", "/episodes/{episode_id}/predict"}
    body = paths["/episodes"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}


def test_episode_store_drops_the_least_recently_used_and_the_expired():
    now = [0.0]
    store = EpisodeStore(capacity=2, ttl=10, clock=lambda: now[0])

    def episode(name):
        return Episode(name, ("a", "b"), None, None, (1, 1))

    store.add(episode("one"))
    store.add(episode("two"))
    now[0] = 5
    store.get("one")  # now the most recently used
    store.add(episode("three"))
    assert len(store) == 2 and store.get("one").id == "one"
    with pytest.raises(ApiError) as e:
        store.get("two")
    assert e.value.status == 404
    now[0] = 14.9
    assert store.get("three").id == "three"  # used at 5, so 9.9 s idle: kept, and used again now
    now[0] = 15.1
    with pytest.raises(ApiError):
        store.get("one")  # idle since 5
    assert store.get("three").id == "three" and len(store) == 1
    now[0] = 40
    assert len(store) == 0
    with pytest.raises(ValueError):
        EpisodeStore(0, 10)


@pytest.mark.parametrize("algorithm", ["protonet", "maml"])
def test_concurrent_requests_give_the_sequential_answers(trained, algorithm):
    """Several episodes predicted from 6 threads at once answer exactly as one after another (MAML
    adapts through functional_call on the one shared module: the model lock keeps adaptations apart)."""
    data = trained["data"]
    api = client(trained[algorithm])
    rng = np.random.default_rng(0)
    requests = []
    for k in range(4):
        names = sorted(rng.choice([f"class{c:02d}" for c in range(9)], 3, replace=False).tolist())
        files = {n: sorted((data / n).iterdir())[: 1 + k % 2] for n in names}
        episode = api.post("/episodes", json=episode_json(files)).json()["id"]
        queries = [b64(sorted((data / n).iterdir())[4]) for n in names]
        requests += [(episode, queries)] * 3

    def ask(item):
        episode, queries = item
        r = api.post(f"/episodes/{episode}/predict", json={"images": queries})
        assert r.status_code == 200, r.text
        return r.json()

    sequential = [ask(item) for item in requests]
    with ThreadPoolExecutor(6) as pool:
        concurrent = list(pool.map(ask, requests))
    assert concurrent == sequential
    assert len({str(s["predictions"]) for s in sequential}) == 4  # the episodes differ


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def test_serve_without_a_checkpoint_or_the_extras_says_what_to_do(trained, tmp_path, capsys, monkeypatch):
    code, _, err = run(capsys, "serve")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "needs a checkpoint" in err and "metalab train --config configs/omniglot/protonet_5w1s.yaml" in err
    code, _, err = run(capsys, "serve", tmp_path / "missing.pt")
    assert code == 2 and "missing.pt" in err and len(err.strip().splitlines()) == 1
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a)
    )
    code, _, err = run(capsys, "serve", trained["protonet"])
    assert code == 2 and "needs fastapi, not installed: pip install 'metalab[serve]'" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metalab_serve_answers_over_http(trained):
    """The real command in a subprocess, asked over loopback with httpx."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "metalab.cli", "serve", str(trained["protonet"]), "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, model = time.monotonic() + 60, None
        while model is None and time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read()
            try:
                model = httpx.get(f"http://127.0.0.1:{port}/model", timeout=2).json()
            except httpx.TransportError:
                time.sleep(0.2)
        assert model is not None and model["algorithm"] == "protonet"
        files = support_files(trained["data"], CLASSES[:2], (1, 1))
        # Generous time limits: the first model call loads the compiled Conv-4 kernels.
        made = httpx.post(f"http://127.0.0.1:{port}/episodes", json=episode_json(files), timeout=120)
        assert made.status_code == 201
        query = b64(sorted((trained["data"] / "class01").iterdir())[3])
        answer = httpx.post(
            f"http://127.0.0.1:{port}/episodes/{made.json()['id']}/predict",
            json={"images": [query]},
            timeout=120,
        )
        assert answer.status_code == 200 and set(answer.json()["predictions"][0]["probabilities"]) == set(
            CLASSES[:2]
        )
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0]
    assert f"on http://127.0.0.1:{port}/" in output
