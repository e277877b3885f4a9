"""Autoencoder baseline: a small torch MLP scored by reconstruction error (MSE)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from flow_anomaly_ros.model_store import ModelFileError
from flow_anomaly_ros.timeseries.detectors.base import Detector, register_detector


@register_detector
class AutoencoderDetector(Detector):
    """Dense autoencoder (the paper: two hidden layers with dropout, bottleneck 2, MSE loss, 100 epochs).

    Encoder ``d -> hidden[0] -> hidden[1] -> bottleneck``, mirrored decoder, ReLU, dropout after each hidden layer;
    score = mean squared reconstruction error of the window's normalised features.
    """

    name = "autoencoder"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "hidden": [32, 16],
        "bottleneck": 2,
        "dropout": 0.1,
        "epochs": 100,
        "batch_size": 256,
        "learning_rate": 1e-3,
        "seed": 0,
    }

    def _build(self) -> Any:
        import torch

        h = [int(v) for v in self.params["hidden"]]
        p = float(self.params["dropout"])
        dims = [self.n_features_, *h]
        enc: list[torch.nn.Module] = []
        for a, b in itertools.pairwise(dims):
            enc += [torch.nn.Linear(a, b), torch.nn.ReLU(), torch.nn.Dropout(p)]
        enc.append(torch.nn.Linear(dims[-1], int(self.params["bottleneck"])))
        dec: list[torch.nn.Module] = []
        back = [int(self.params["bottleneck"]), *reversed(h)]
        for a, b in itertools.pairwise(back):
            dec += [torch.nn.Linear(a, b), torch.nn.ReLU(), torch.nn.Dropout(p)]
        dec.append(torch.nn.Linear(back[-1], self.n_features_))
        return torch.nn.Sequential(*enc, *dec)

    def _fit(self, x: np.ndarray, progress: bool) -> None:
        import torch

        torch.manual_seed(int(self.params["seed"]))
        gen = torch.Generator().manual_seed(int(self.params["seed"]))
        self.net = self._build()
        opt = torch.optim.Adam(self.net.parameters(), lr=float(self.params["learning_rate"]))
        xt = torch.from_numpy(x.astype(np.float32))
        bs = int(self.params["batch_size"])
        epochs = range(int(self.params["epochs"]))
        if progress:
            from tqdm import tqdm

            epochs = tqdm(epochs, desc="autoencoder", unit="epoch")
        loss = torch.tensor(float("nan"))
        for _ in epochs:
            self.net.train()
            perm = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(perm), bs):
                xb = xt[perm[i : i + bs]]
                loss = torch.nn.functional.mse_loss(self.net(xb), xb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.net.eval()
        self.fit_summary_ = {"final_batch_mse": float(loss.detach())}

    def _score(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            xt = torch.from_numpy(x.astype(np.float32))
            return ((self.net(xt) - xt) ** 2).mean(dim=1).double().numpy()

    def _tensors(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}

    def _restore(self, tensors: dict[str, np.ndarray], state: dict[str, Any], path: Path) -> None:
        import torch

        self.net = self._build()
        try:
            self.net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
        except RuntimeError as exc:
            raise ModelFileError(
                f"autoencoder weights in {path} do not fit the manifest's architecture: {exc}"
            ) from exc
        self.net.eval()
