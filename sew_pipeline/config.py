"""Job configuration: the config dataclasses of the jobs (sections: inference, decode, finalize, segmentation,
decoding), loaded from YAML plus ``--set key=value`` overrides by sew_pipeline.configlib (re-exported here).
Every field has a default and ``--help`` text (``opt(default, help)``); ``validate()`` names the key at fault.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional, Union

from sew_pipeline.configlib import (ConfigError, arg_parser, help_text, load_config, opt, parse_args,  # noqa: F401
                                    parse_set, redacted_dict, to_dict)

@dataclasses.dataclass
class InferenceConfig:
    """Actor pool and batching of the model stage."""
    num_actors: Optional[int] = opt(None, "fixed number of model actors (each loads the model once); null = one per "
                                          "GPU when actors get GPUs, else 1")
    cpus_per_actor: float = opt(1.0, "CPUs per actor on CPU clusters; torch uses this many threads")
    actors_per_gpu: int = opt(1, "model actors sharing one GPU (2: one actor's host work overlaps the other's "
                                 "forward passes)")
    use_gpu: Literal["auto", "yes", "no"] = opt("auto", "one GPU per actor: auto = when the cluster has GPUs; yes = "
                                                        "fail at once without a usable one (true/false work too)")
    precision: Literal["reference", "fp32", "bf16", "int8"] = opt(
        "fp32", "on CPU: reference = plain model; fp32/bf16/int8 = models.fast inference path (fused kernels)")
    gpu_precision: Literal["auto", "reference", "fp32", "bf16", "int8"] = opt(
        "auto", "on a GPU: auto = bf16 where the GPU has it natively (compute capability >= 8), else fp32; int8 runs "
                "as bf16 (or fp32) there, with a warning")
    tf32: bool = opt(False, "on a GPU: allow TF32 for fp32 matmuls and convolutions (faster on Ampere and later, "
                            "~1e-3 relative error; off = fp32 means fp32)")
    compile: bool = opt(False, "torch.compile the fast path, warmed up when the actor starts (eager if compiling fails;"
                               " pays on long runs: ~1 min compile per actor and shape)")
    batch_rows: int = opt(256, "chunk rows handed to an actor per call (grouped by duration inside)")
    max_batch_audio_s: float = opt(160.0, "bound on padded audio seconds per forward pass (on CPU)")
    gpu_max_batch_audio_s: float = opt(1200.0, "the same bound when the actor runs on a GPU (larger passes keep it busy)")
    max_padding_fraction: float = opt(0.08, "a forward pass never pads more than this fraction of frames")

    def validate(self) -> None:
        if ((self.num_actors is not None and self.num_actors < 1) or self.batch_rows < 1 or self.cpus_per_actor <= 0
                or not 1 <= self.actors_per_gpu <= 8):
            raise ConfigError("inference.num_actors (null or >= 1), batch_rows must be >= 1, cpus_per_actor > 0 and "
                              "actors_per_gpu in [1, 8]")
        if not 0 <= self.max_padding_fraction < 1 or self.max_batch_audio_s <= 0 or self.gpu_max_batch_audio_s <= 0:
            raise ConfigError("inference.max_padding_fraction must be in [0, 1), max_batch_audio_s and "
                              "gpu_max_batch_audio_s > 0")


@dataclasses.dataclass
class DecodeConfig:
    """Decode/resample/chunk stage (CPU tasks)."""
    batch_rows: int = opt(128, "at most this many manifest rows per decode task (short items leave as one block: "
                               "fewer, larger blocks cost less per row); fewer when the manifest is small next to the "
                               "cluster (4 tasks per CPU), so a few hours-long calls still decode in parallel")
    num_cpus: float = opt(1.0, "CPUs reserved per decode task")
    memory_mb: int = opt(1024, "memory reserved per decode task (MiB)")
    slice_mb: float = opt(16.0, "a decode task sends long files on in slices of about this many MiB of "
                                "16 kHz float32 windows (bounds memory for hours-long calls)")
    channels: str = opt("mix", "'mix' (downmix), 'split' (one item per channel) or a channel index")
    max_duration_s: Optional[float] = opt(None, "items longer than this are an error (null = no limit)")

    def validate(self) -> None:
        if self.batch_rows < 1 or self.num_cpus <= 0 or self.memory_mb <= 0 or self.slice_mb <= 0:
            raise ConfigError("decode.batch_rows must be >= 1; num_cpus, memory_mb and slice_mb > 0")


@dataclasses.dataclass
class FinalizeConfig:
    """Post-model CPU stage (stitching, text, labels, aggregates) and the Parquet writer."""
    num_cpus: float = opt(0.5, "CPUs reserved per finalize task (stateless: as many run as the cluster fits)")
    merge_actors: int = opt(2, "keyed-merge actors (sharded by id) for ids whose rows span blocks (long items)")
    rows_per_file: int = opt(100_000, "output rows gathered per Parquet file (fewer, larger objects; a killed job "
                                      "keeps every file already written and redoes the rest on resume)")

    def validate(self) -> None:
        # above 2**20 rows Ray's writer splits files by rows, which could split one id's rows across files
        if self.num_cpus < 0 or self.merge_actors < 1 or not 1 <= self.rows_per_file <= 2**20:
            raise ConfigError("finalize.num_cpus must be >= 0, merge_actors >= 1, rows_per_file in [1, 1048576]")


@dataclasses.dataclass
class SegmentationConfig:
    """What goes to the model: fixed windows over all the audio, or only each channel's speech segments."""
    method: Literal["windows", "vad"] = opt("windows", "windows = window_s/overlap_s windows over all the audio; vad = "
                                                       "speech segments per channel (sew_pipeline.vad), one model "
                                                       "input each, plus a conversation row per call")
    threshold_db: float = opt(15.0, "vad: a 20 ms frame is speech this far above the channel's noise floor "
                                    "(10th percentile of its frame energies)")
    min_level_dbfs: float = opt(-60.0, "vad: and above this level (digital silence and hiss are never speech)")
    min_speech_s: float = opt(0.2, "vad: shorter bursts are dropped")
    min_silence_s: float = opt(0.3, "vad: a pause this long ends a segment")
    padding_s: float = opt(0.2, "vad: audio kept before and after each segment")
    max_segment_s: float = opt(20.0, "vad: longer speech is cut at its quietest point below this length")

    def validate(self) -> None:
        if self.min_speech_s <= 0 or self.min_silence_s <= 0 or self.padding_s < 0:
            raise ConfigError("segmentation.min_speech_s and min_silence_s must be > 0, padding_s >= 0")
        if not 2 * self.padding_s + 0.5 <= self.max_segment_s <= 600:
            raise ConfigError("segmentation.max_segment_s must be in [2 * padding_s + 0.5, 600]")

    def params(self):
        from sew_pipeline.vad import VadParams
        return VadParams(**{f.name: getattr(self, f.name) for f in dataclasses.fields(VadParams)})


@dataclasses.dataclass
class PipelineConfig:
    """Keys shared by every job that runs a model over a manifest."""
    manifest: Union[str, list[str]] = opt(
        "", "manifest URI (JSONL/CSV/Parquet), a folder or glob of such parts, a LibriSpeech folder, or a list "
            "of any of these (local or s3://)")
    output: str = opt("", "output Parquet folder: a local path or s3:// URI (rerun = resume)")
    model: str = opt("demo-ctc", "checkpoint folder or URI, or a shipped default (demo-ctc, demo-kws)")
    storage_options: dict[str, Any] = opt({}, "s3:// access: endpoint_url, key, secret, region "
                                              "(AWS_* environment variables also apply)")
    allowed_prefixes: list[str] = opt([], "if set, manifest rows whose audio is not under one of these "
                                          "prefixes (s3://bucket/dir, /local/dir) become 'not_allowed' error rows")
    ray_address: Optional[str] = opt(None, "Ray cluster to join; null = RAY_ADDRESS or a local Ray")
    limit: Optional[int] = opt(None, "process only the first N manifest rows (smoke runs)")
    progress_timeout_s: float = opt(600.0, "fail the job when no stage makes progress for this long, naming the "
                                           "starved stage (0 = wait forever)")
    max_passes: int = opt(3, "passes over the ids not yet written: a pass aborted by a lost node or ids lost in a "
                             "restarted actor are redone by the next one (written ids are final)")
    resume: bool = opt(True, "skip ids already present in the output (false: the output must be empty)")
    window_s: float = opt(30.0, "long audio is cut into equal windows of at most this length")
    overlap_s: float = opt(2.0, "overlap between consecutive windows")
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig, metadata={"help": "decode stage"})
    inference: InferenceConfig = dataclasses.field(default_factory=InferenceConfig,
                                                   metadata={"help": "model stage"})
    finalize: FinalizeConfig = dataclasses.field(default_factory=FinalizeConfig,
                                                 metadata={"help": "post-model stage and output files"})
    segmentation: SegmentationConfig = dataclasses.field(
        default_factory=SegmentationConfig, metadata={"help": "fixed windows, or speech segments (vad) for calls"})
    task: str = dataclasses.field(default="ctc", init=False, repr=False)

    def validate(self) -> None:
        if not self.manifest:
            raise ConfigError("manifest: required (set it in the YAML or with --set manifest=...)")
        if not self.output:
            raise ConfigError("output: required (set it in the YAML or with --set output=...)")
        if self.window_s <= 0 or not 0 <= self.overlap_s < self.window_s / 2:
            raise ConfigError("window_s must be > 0 and 0 <= overlap_s < window_s / 2")
        if self.limit is not None and self.limit < 0:
            raise ConfigError("limit must be >= 0")
        if self.progress_timeout_s < 0 or self.max_passes < 1:
            raise ConfigError("progress_timeout_s must be >= 0 and max_passes >= 1")


@dataclasses.dataclass
class DecodingConfig:
    """CTC decoding in the post-model stage: greedy, or beam search with an n-gram LM (sew_pipeline.beam)."""
    method: Literal["greedy", "beam"] = opt("greedy", "greedy (argmax) or beam (beam search, with the LM below "
                                                      "or the checkpoint folder's language_model/ if it has one)")
    beam_width: int = opt(50, "beams kept per frame")
    lm: Optional[str] = opt(None, "KenLM model (.arpa or binary; local or s3://); null = the checkpoint folder's "
                                  "language_model/ (Wav2Vec2ProcessorWithLM layout), else no LM")
    lexicon: Optional[str] = opt(None, "unigram list, one word per line (null = language_model/unigrams.txt, or "
                                       "the ARPA file's words)")
    alpha: Optional[float] = opt(None, "LM weight (null = language_model/attrs.json, else 0.5)")
    beta: Optional[float] = opt(None, "word insertion bonus (null = attrs.json, else 1.5)")
    unk_score_offset: Optional[float] = opt(None, "log-score of a word outside the lexicon (null = attrs.json, "
                                                  "else -10); such words are kept, at this cost")
    hotwords: list[str] = opt([], "words or phrases to favour (may be outside the lexicon)")
    hotword_weight: float = opt(10.0, "bonus per hotword occurrence")
    beam_prune_logp: float = opt(-10.0, "beams this far below the best are dropped")
    token_min_logp: float = opt(-5.0, "tokens below this log-prob are skipped (and never leave the model stage)")
    n_best: int = opt(1, "up to this many hypotheses per item in the nbest column (1 = no column)")

    def validate(self) -> None:
        if self.beam_width < 1 or self.n_best < 1 or self.n_best > self.beam_width:
            raise ConfigError("decoding.beam_width must be >= 1 and 1 <= decoding.n_best <= beam_width")
        if self.beam_prune_logp > 0 or self.token_min_logp > 0:
            raise ConfigError("decoding.beam_prune_logp and decoding.token_min_logp must be <= 0")
        if self.method == "greedy" and (self.lm or self.hotwords or self.n_best > 1):
            raise ConfigError("decoding.lm / hotwords / n_best apply to decoding.method=beam (it is greedy)")


@dataclasses.dataclass
class TranscribeConfig(PipelineConfig):
    """jobs/transcribe_corpus.py: CTC transcription with word timings."""
    decoding: DecodingConfig = dataclasses.field(default_factory=DecodingConfig,
                                                 metadata={"help": "CTC decoding (greedy or beam + LM)"})
    task: str = dataclasses.field(default="ctc", init=False, repr=False)


@dataclasses.dataclass
class LabelConfig(PipelineConfig):
    """jobs/label_archive.py: windowed classification of (call-center) audio."""
    model: str = opt("demo-kws", "checkpoint folder or URI, or a shipped default (demo-ctc, demo-kws)")
    window_s: float = opt(1.0, "classification windows: at most this long (s), all of one length")
    overlap_s: float = opt(0.25, "overlap between consecutive windows")
    decode: DecodeConfig = dataclasses.field(default_factory=lambda: DecodeConfig(channels="split"),
                                             metadata={"help": "decode stage (channels split)"})
    top_k: int = opt(3, "labels with scores kept per window/aggregate row")
    task: str = dataclasses.field(default="classification", init=False, repr=False)

    def validate(self) -> None:
        super().validate()
        if self.top_k < 1:
            raise ConfigError("top_k must be >= 1")
