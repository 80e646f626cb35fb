#!/usr/bin/env bash
# What the GPU machine lacks, packed into .gpu/ (git-ignored; the device tool carries it), from the repository root
# with the project's environment active (`. .venv/bin/activate`; one_lead.py imports the project):
#   bash docs/results/gpu/pack.sh [MITDB]            (default ../shared/data/mitdb)
# The machine has Python 3.12, CUDA torch, numpy, scipy, scikit-learn and pandas, but no registry: the wheels of
# flwr, torchattacks, wfdb, pydantic and what they need that it lacks (versions as in this project's CI install).
# The records: only the lead ECG-FAT reads (one_lead.py, checked sample for sample), xz-compressed: 21 MB
# instead of 90, inside the tool's 64 MiB with the repository and the wheels. Never commit .gpu/.
set -euo pipefail
mitdb=${1:-../shared/data/mitdb}
rm -rf .gpu && mkdir -p .gpu/whl
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
    flwr==1.39.0 torchattacks==3.5.1 wfdb==4.3.1 soundfile==0.14.0 pydantic==2.14.4 pydantic_core==2.50.5 \
    annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 cryptography==46.0.7 cffi==2.1.1 \
    pycparser==3.12 pycryptodome==3.24.1 iterators==0.0.2 tomli==2.5.0 tomli_w==1.2.0 grpcio==1.85.3 \
    grpcio-health-checking==1.81.1 protobuf==6.33.6 typer==0.20.1 prompt_toolkit==3.0.53 wcwidth==0.9.4 \
    packaging==25.0 pathspec==1.1.1 SQLAlchemy==2.1.9 greenlet==3.5.6 alembic==1.20.1 Mako==1.4.3 uvicorn==0.49.0 \
    fastapi==0.138.2 starlette==1.3.1 rich==14.3.4 httpx==0.28.1 httpcore==1.0.9 requests==2.34.2
python docs/results/gpu/one_lead.py "$mitdb" .gpu/mitdb >/dev/null
tar -C .gpu -cJf .gpu/mitdb.tar.xz mitdb && rm -r .gpu/mitdb
du -sh .gpu/whl .gpu/mitdb.tar.xz
