"""What a training worker reads: its transform (images, or a video network's clips) and its loader,
its own (`ShardLoader`) or its share of the cluster's Ray Data pipeline (`RayDataInput`)."""

from __future__ import annotations

from pipelines.online.catalog import Catalog
from pipelines.online.clips import ClipTransform
from pipelines.online.ingest_pipeline import IngestSpec
from pipelines.online.ingest_worker import RayDataInput
from pipelines.online.loader import LoaderConfig, ShardLoader
from pipelines.online.transforms import TrainTransform
from training.config import TrainConfig
from training.normalization import mean_std


def train_transform(cfg: TrainConfig) -> TrainTransform:
    d = cfg.data
    pca = None
    if d.color_pca:
        from pipelines.online import pca_noise
        pca = pca_noise.load(d.train_shards, scale=d.color_pca_scale)
    return TrainTransform(crop=d.crop, size=d.size, jitter=tuple(d.jitter), flip=d.flip, pca=pca, **mean_std(d))


def clip_transform(cfg: TrainConfig, offsets: tuple[int, ...] | None) -> ClipTransform | None:
    """For a video network (`offsets`: the frames its backbone takes, `clip_offsets`), clips of the stored
    videos at their stored rate; None for an image network."""
    if offsets is None:
        return None
    return clips_of(cfg, offsets, Catalog.load(cfg.data.train_shards).video["fps"], cfg.data.eval_clips)


def clips_of(cfg: TrainConfig, offsets: tuple[int, ...], fps: float, clips: int) -> ClipTransform:
    """The clips a run of `cfg` trains and tests on: its network's frames, crop, region, views, flips
    and normalisation, `clips` test clips per video."""
    d = cfg.data
    return ClipTransform(offsets=tuple(offsets), fps=fps, size=d.size, flip=d.flip, clips=clips,
                         region=d.clip_region, test_views=d.clip_views, **mean_std(d))


def ingest_spec(cfg: TrainConfig, clips: ClipTransform | None = None) -> IngestSpec:
    """What `data.ingest: ray_data`'s tasks need to make the training rows (a video network's `clips`)."""
    d = cfg.data
    return IngestSpec(shards=d.train_shards, mode=d.sampling, seed=cfg.run.seed,
                      transform=clips or train_transform(cfg), attributes=cfg.model.num_attributes,
                      block=d.read_block, chunk=d.ingest_chunk)


def build_train_loader(cfg: TrainConfig, rank: int, world: int, device, plan=None,
                       clips: ClipTransform | None = None) -> ShardLoader | RayDataInput:
    """The rank's training input: its own loader (of `clips` for a video network), or with
    `data.ingest: ray_data` its share of the cluster's pipeline (`plan`: the run's EpochPlan actor)."""
    d = cfg.data
    channels_last = device.type == "cuda" and cfg.run.channels_last and clips is None
    if d.ingest == "ray_data":
        return RayDataInput(ingest_spec(cfg, clips), plan, rank, world, d.batch_size, device, channels_last,
                            d.ingest_prefetch)
    transform = clips or train_transform(cfg)
    return ShardLoader(LoaderConfig(shards=d.train_shards, mode=d.sampling, batch_size=d.batch_size,
                                    num_workers=d.loader_workers, seed=cfg.run.seed, buffer_size=d.shuffle_buffer,
                                    block=d.read_block, decode=d.decode, attributes=cfg.model.num_attributes),
                       transform, rank=rank, world_size=world, device=device, channels_last=channels_last)
