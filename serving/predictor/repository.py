"""A pipeline op's model from a model repository's model folder: the version its policy selects, reloaded live."""

import dataclasses
from pathlib import Path

import numpy as np
import yaml

from serving.config import LocalServiceConf
from serving.context import RequestContext
from serving.errors import InitError
from serving.model_card import CARD_FILE
from serving.model_config import SERVER_CONF, read_config
from serving.model_repository import SERVER_DIR, ModelRepository, VersionPolicy, version_folders
from serving.predictor.local import LocalPredictor
from serving.predictor.settings import settings_from_conf
from serving.proto.general_model_config_pb2 import FeedVar


def _contract(server_dir: Path) -> tuple:
    """What the op was built around and a new version must keep: feeds and fetches, preprocessing, labels."""
    card_file = server_dir.parent / CARD_FILE
    card = yaml.safe_load(card_file.read_text(encoding="utf-8")) if card_file.is_file() else {}
    labels = server_dir.parent / str(card.get("labels", ""))
    return (read_config(server_dir / SERVER_CONF).SerializeToString(deterministic=True),
            yaml.safe_dump(card.get("preprocessing")), labels.read_bytes() if labels.is_file() else b"")


class RepositoryPredictor:
    """The highest version the policy selects (polled for when `repository_poll_s` is set); each predict holds the
    version it runs on, so a reload frees the old one only after its last request.

    The op read its model card once at start, so a new version must have the same feeds, fetches, preprocessing
    and labels; one that differs is refused (restart the service to change them).
    """

    def __init__(self, conf: LocalServiceConf, dynamic_shape_info: dict | None, pool_size: int, path: str) -> None:
        self.conf = conf
        self.dynamic_shape_info = dynamic_shape_info
        self.pool_size = pool_size
        self.path = path
        folder = Path(conf.model_config)
        self.name = folder.name
        self._contract: tuple | None = None
        self.models = ModelRepository(lambda: {self.name: version_folders(folder)},
                                      VersionPolicy.parse(conf.version_policy, f"{path}.version_policy"), self._load,
                                      f"{path}.model_config {folder}")
        self.models.load_all()
        if conf.repository_poll_s > 0:
            self.models.start_polling(conf.repository_poll_s)

    def _load(self, name: str, version: int, folder: Path) -> LocalPredictor:
        """One version's predictor pool, warmed up, if it keeps the contract of the version the op started with."""
        server_dir = folder / SERVER_DIR
        contract = _contract(server_dir)
        if self._contract is not None and contract != self._contract:
            raise InitError(f"its feeds, fetches, preprocessing or labels differ from those the op started with; "
                            f"restart the service to serve {server_dir}")
        model_config = read_config(server_dir / SERVER_CONF)
        settings = settings_from_conf(dataclasses.replace(self.conf, model_config=str(server_dir)), model_config,
                                      self.dynamic_shape_info, path=self.path)
        predictor = LocalPredictor(settings, model_config, pool_size=self.pool_size)
        predictor.warm_up()
        self._contract = contract
        return predictor

    @property
    def model_dir(self) -> str:
        """The serving_server folder of the version serving now (the op reads its model card from beside it)."""
        return str(Path(self.conf.model_config) / self.models.versions(self.name)[-1] / SERVER_DIR)

    @property
    def max_batch_size(self) -> int:
        """The most rows one predict() call takes."""
        return self.models.find(self.name).max_batch_size

    @property
    def engine_info(self) -> dict:
        """The serving version's engine, and its version number."""
        return {**self.models.find(self.name).engine_info, "version": int(self.models.versions(self.name)[-1])}

    @property
    def feed_vars(self) -> list[FeedVar]:
        """The model config's feed variables (the same in every version)."""
        return self.models.find(self.name).feed_vars

    @property
    def feed_names(self) -> list[str]:
        """Feed aliases in model-config order."""
        return self.models.find(self.name).feed_names

    @property
    def fetch_aliases(self) -> list[str]:
        """Fetch aliases in model-config order."""
        return self.models.find(self.name).fetch_aliases

    def predict(self, feed: dict[str, np.ndarray], fetch: list[str] | None = None,
                ctx: RequestContext | None = None) -> dict[str, np.ndarray]:
        """LocalPredictor.predict on the serving version, held for the call."""
        with self.models.hold(self.name) as predictor:
            return predictor.predict(feed, fetch, ctx)

    def close(self) -> None:
        """Stop polling and free every version (once its requests finish)."""
        self.models.stop()
