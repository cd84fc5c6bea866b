"""Optional features and their extras: `import decoders` needs none of them, and each feature whose package is
missing says which extra to install (`pip install 'decoders-lab[EXTRA]'`), as a user meets it."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import decoders
from decoders.cli import main
from decoders.errors import DecodersError

PYPROJECT = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
OPTIONAL = ("matplotlib", "nltk", "ray")


def hide(monkeypatch, package: str) -> None:
    """Make ``import package`` (and any of its submodules, even ones imported before) raise ImportError."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")] + [package]:
        monkeypatch.setitem(sys.modules, name, None)


def assert_names_extra(message: str, package: str) -> None:
    """The message says ``pip install 'decoders-lab[EXTRA]'`` for an extra of pyproject.toml that brings ``package``."""
    found = re.search(r"pip install 'decoders-lab\[(\w+)\]'", message)
    assert found, f"no `pip install 'decoders-lab[EXTRA]'` in: {message}"
    requirements = PYPROJECT["optional-dependencies"][found.group(1)]
    assert any(r.startswith(package) for r in requirements), f"extra {found.group(1)!r} does not install {package}"


def test_core_dependencies_hold_no_optional_package():
    core = {re.split(r"[<>=!~ \[]", r)[0].lower() for r in PYPROJECT["dependencies"]}
    assert core.isdisjoint(OPTIONAL)
    extras = PYPROJECT["optional-dependencies"]
    assert {"plots", "metrics", "research", "ray"} <= set(extras)
    assert "decoders-lab[plots,metrics]" in extras["research"]


def test_import_decoders_needs_no_optional_package():
    hidden = "; ".join(f"sys.modules[{name!r}] = None" for name in OPTIONAL)
    code = f"import sys; {hidden}; import decoders, decoders.metrics, decoders.plotting, decoders.cli"
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def steps(tiny_gpt2_dir):
    """Two traced steps of greedy generation on the tiny model."""
    return decoders.generate("The quick", "greedy", str(tiny_gpt2_dir), max_new_tokens=2, trace=True)[0].steps


def test_plot_without_matplotlib_names_the_plots_extra(monkeypatch, tmp_path, steps):
    from decoders.plotting import plot_stages

    assert steps and isinstance(steps[0], decoders.StepRecord)
    hide(monkeypatch, "matplotlib")
    with pytest.raises(DecodersError, match=r"plotting needs matplotlib") as caught:
        plot_stages(steps, tmp_path / "stages.png")
    assert_names_extra(str(caught.value), "matplotlib")
    assert not (tmp_path / "stages.png").exists()


def test_explain_plot_without_matplotlib_names_the_plots_extra(monkeypatch, capsys, tmp_path, tiny_gpt2_dir):
    hide(monkeypatch, "matplotlib")
    with pytest.raises(SystemExit) as exited:
        main(["explain", "The quick", "--model", str(tiny_gpt2_dir), "--steps", "1", "--plot", str(tmp_path / "p.png")])
    assert exited.value.code == 2
    err = " ".join(capsys.readouterr().err.split())  # the console may wrap the line
    assert "error:" in err and "Traceback" not in err
    assert_names_extra(err, "matplotlib")


def test_self_bleu_without_nltk_names_the_metrics_extra(monkeypatch):
    from decoders import metrics

    hide(monkeypatch, "nltk")
    with pytest.raises(DecodersError, match=r"Self-BLEU needs nltk") as caught:
        metrics.self_bleu(["a b c d e", "a b c d f"])
    assert_names_extra(str(caught.value), "nltk")


def test_self_bleu_with_nltk_still_works():
    pytest.importorskip("nltk", reason="the metrics extra is not installed: pip install 'decoders-lab[metrics]'")
    from decoders import metrics

    assert metrics.self_bleu(["a b c d e", "a b c d e"]) == pytest.approx(1.0)
