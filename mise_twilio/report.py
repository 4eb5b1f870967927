"""A picture of one call: its records (and, from a capture, its audio's level) → one HTML page.

``mise-twilio report CALL.jsonl -o call.html`` replays a capture (Twilio's messages, one per
line) through the core for the records and measures both tracks' level per 20 ms frame on the
core's own timeline (``TrackTimeline``: the same grid, gaps and lost audio as the analysis);
``mise-twilio report --events events.jsonl --call CA… -o call.html`` draws a call from records
alone (a sink's JSONL), showing what the records hold: turns, segments, their energy, flags,
marks, DTMF and the summary, without a level trace.

The page is self-contained: the data is a JSON block, the renderer a small hand-written SVG
script, the styles inline; it loads nothing from the network. It shows a timeline (both tracks'
level over time, speech segments, turns coloured by speaker, overlaps, barge-ins,
interruptions and backchannels, lost audio, marks and DTMF, arousal when turn records carry
it), zoomable with the wheel, a drag or the buttons (``#t=5-12.5`` in the URL opens on that window,
in seconds; a click on a turn zooms to it), then the call summary and one table row per turn.

Pure logic: ``build_report(records, levels) -> str`` takes records as JSON-shaped dicts (so
fields newer than this module, such as ``arousal``, pass through) and returns the HTML; file
I/O is the CLI's.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mise_twilio.core import audio
from mise_twilio.core.errors import ProtocolError
from mise_twilio.core.messages import MediaMessage, StartMessage, parse_message, read_media
from mise_twilio.core.timeline import DISCONTINUITY, TrackTimeline

__all__ = [
    "TrackLevels",
    "build_report",
    "levels_from_capture",
    "records_from_capture",
    "records_of_call",
]

Record = Mapping[str, Any]

LEVEL_FLOOR_DBFS = -80.0
"""Levels below this are drawn at it (digital silence is -100 dBFS)."""
MAX_LEVEL_POINTS = 60_000
"""Per track; a longer call is drawn from the loudest frame of each bucket (20 min at 20 ms)."""


@dataclass(frozen=True, slots=True)
class TrackLevels:
    """One track's level over the call, on the core's 20 ms grid.

    - ``origin_ms``: stream-clock ms of point 0; point ``i`` covers
      ``[origin_ms + i·step_ms, origin_ms + (i+1)·step_ms)``.
    - ``step_ms``: 20 (one frame), or a multiple of it for calls over ``MAX_LEVEL_POINTS``
      frames (each point is then the loudest frame of its bucket).
    - ``dbfs``: RMS level per point, dBFS, floored at ``LEVEL_FLOOR_DBFS``; ``None`` where
      the timeline has no audio (before the track began, after a discontinuity).
    - ``lost``: ``[start_ms, end_ms]`` spans of audio Twilio never delivered (filled with
      silence on the timeline, counted in ``lost_ms``).
    """

    origin_ms: int
    step_ms: int
    dbfs: list[float | None]
    lost: list[tuple[int, int]] = field(default_factory=list)


def levels_from_capture(
    lines: Iterable[str | bytes], *, max_gap_ms: int = 5000
) -> dict[str, TrackLevels]:
    """Per track (``inbound``/``outbound``), the level of every 20 ms frame of a capture.

    Messages are read as the core reads them (``parse_message``, ``read_media``) and placed by
    ``TrackTimeline`` on one grid anchored at the first valid media chunk, as the analysis
    does; lines that are not valid media are skipped. Levels: RMS of the decoded 16-bit PCM
    per frame, ``20·log10(rms / 32768)``, computed in numpy over all frames at once.
    """
    origin_samples: int | None = None
    origin_ms = 0
    timelines: dict[str, TrackTimeline] = {}
    started = False
    for line in lines:
        try:
            message = parse_message(line)
        except ProtocolError:
            continue
        if isinstance(message, StartMessage):
            started = True
            continue
        if not started or not isinstance(message, MediaMessage):
            continue
        try:
            chunk = read_media(message, max_timestamp_ms=6 * 3600 * 1000, max_chunk_ms=1000)
        except ProtocolError:
            continue
        if origin_samples is None:
            origin_samples = chunk.timestamp_ms * audio.SAMPLES_PER_MS
            origin_ms = chunk.timestamp_ms
        timeline = timelines.get(chunk.track)
        if timeline is None:
            timeline = timelines[chunk.track] = TrackTimeline(origin_samples, max_gap_ms=max_gap_ms)
        timeline.push(chunk.timestamp_ms, chunk.payload, chunk.chunk)
    out: dict[str, TrackLevels] = {}
    for track, timeline in timelines.items():
        timeline.finish()
        out[track] = _levels(origin_ms, list(timeline.frames))
    return out


def _levels(origin_ms: int, frames: list[tuple[int, bytes, int]]) -> TrackLevels:
    audio_frames = [(k, ulaw, lost) for k, ulaw, lost in frames if ulaw is not DISCONTINUITY]
    if not audio_frames:
        return TrackLevels(origin_ms, audio.FRAME_MS, [])
    first = min(0, audio_frames[0][0])
    n = audio_frames[-1][0] - first + 1
    index = np.array([k - first for k, _, _ in audio_frames])
    pcm = audio.pcm16_array(audio.ulaw_to_pcm16(b"".join(u for _, u, _ in audio_frames)))
    samples = pcm.reshape(-1, audio.FRAME_SAMPLES).astype(np.float64)
    rms = np.sqrt(np.mean(samples * samples, axis=1))
    with np.errstate(divide="ignore"):
        dbfs = 20.0 * np.log10(rms / audio.FULL_SCALE_RMS)
    dbfs = np.maximum(np.nan_to_num(dbfs, neginf=LEVEL_FLOOR_DBFS), LEVEL_FLOOR_DBFS)
    grid = np.full(n, np.nan)
    grid[index] = dbfs
    step = 1
    if n > MAX_LEVEL_POINTS:
        step = math.ceil(n / MAX_LEVEL_POINTS)
        padded = np.full(step * math.ceil(n / step), np.nan)
        padded[:n] = grid
        with np.errstate(all="ignore"):
            grid = np.nanmax(padded.reshape(-1, step), axis=1)
    values: list[float | None] = [None if math.isnan(v) else round(float(v), 1) for v in grid]
    lost: list[tuple[int, int]] = []
    for k, _, lost_samples in audio_frames:
        if not lost_samples:
            continue
        start = origin_ms + k * audio.FRAME_MS
        end = start + audio.FRAME_MS
        if lost and lost[-1][1] >= start:
            lost[-1] = (lost[-1][0], end)
        else:
            lost.append((start, end))
    return TrackLevels(origin_ms + first * audio.FRAME_MS, step * audio.FRAME_MS, values, lost)


def records_from_capture(lines: Sequence[str]) -> list[dict[str, Any]]:
    """A capture replayed offline (``replay.replay_offline``), as JSON-shaped dicts."""
    from mise_twilio.core.records import to_json
    from mise_twilio.replay import replay_offline

    return [json.loads(to_json(r)) for r in replay_offline(list(lines))]


def records_of_call(
    records: Iterable[Record], call_sid: str | None = None, stream_sid: str | None = None
) -> list[Record]:
    """The records of one stream of one call, plus the call's status events.

    ``call_sid`` ``None``: the call of the first ``stream.started``. ``stream_sid`` ``None``:
    the call's first stream. Records repeated by at-least-once delivery (same ``id``) are kept
    once. Raises ``ValueError`` when the call or stream is not there."""
    unique: dict[str, Record] = {}
    for record in records:
        unique.setdefault(str(record.get("id")), record)
    items = list(unique.values())
    starts = [r for r in items if r.get("type") == "stream.started"]
    if call_sid is None:
        if not starts:
            raise ValueError("no stream.started record: which call?")
        call_sid = starts[0].get("call_sid")
    streams = [r.get("stream_sid") for r in starts if r.get("call_sid") == call_sid]
    if stream_sid is None:
        if streams:
            stream_sid = streams[0]
        else:
            with_media = [r for r in items if r.get("call_sid") == call_sid and r.get("stream_sid")]
            if not with_media:
                raise ValueError(f"no records of call {call_sid}")
            stream_sid = with_media[0].get("stream_sid")
    chosen = [
        r
        for r in items
        if r.get("stream_sid") == stream_sid
        or (r.get("call_sid") == call_sid and str(r.get("type", "")).startswith("call."))
    ]
    if not any(r.get("stream_sid") == stream_sid for r in chosen):
        raise ValueError(f"no records of stream {stream_sid} in call {call_sid}")
    return chosen


def _arousal(turn: Record) -> float | None:
    """A turn's arousal as a number, when the record carries one (a number, or an object
    with ``value``/``score``/``mean``)."""
    value = turn.get("arousal")
    if isinstance(value, Mapping):
        value = next((value[k] for k in ("value", "score", "mean") if k in value), None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _payload(records: Sequence[Record], levels: Mapping[str, TrackLevels] | None) -> dict[str, Any]:
    turns = sorted(
        (r for r in records if r.get("type") == "turn"),
        key=lambda t: (t.get("start_ms", 0), t.get("track", "")),
    )
    started = next((r for r in records if r.get("type") == "stream.started"), None)
    stopped = next((r for r in records if r.get("type") == "stream.stopped"), None)
    events = [
        {
            "kind": r["type"],
            "at_ms": r.get("at_ms"),
            "label": r.get("digit") if r["type"] == "dtmf" else r.get("name"),
            "track": r.get("track"),
        }
        for r in records
        if r.get("type") in ("dtmf", "mark") and isinstance(r.get("at_ms"), int)
    ]
    return {
        "call_sid": (started or stopped or {}).get("call_sid"),
        "stream_sid": (started or stopped or {}).get("stream_sid"),
        "tracks": (started or {}).get("tracks") or sorted({t.get("track") for t in turns}),
        "turns": [
            {
                "id": t.get("id"),
                "index": t.get("index"),
                "track": t.get("track"),
                "speaker": t.get("speaker"),
                "start_ms": t.get("start_ms"),
                "end_ms": t.get("end_ms"),
                "segments": t.get("segments") or [],
                "end_reason": t.get("end_reason"),
                "barge_in": bool(t.get("barge_in")),
                "interrupted": bool(t.get("interrupted")),
                "backchannel": bool(t.get("backchannel")),
                "lost_ms": t.get("lost_ms") or 0,
                "mean_dbfs": (t.get("energy") or {}).get("mean_dbfs"),
                "p95_dbfs": (t.get("energy") or {}).get("p95_dbfs"),
                "arousal": _arousal(t),
            }
            for t in turns
        ],
        "events": events,
        "levels": {
            track: {"origin_ms": lv.origin_ms, "step_ms": lv.step_ms, "dbfs": lv.dbfs}
            for track, lv in (levels or {}).items()
        },
        "lost": {track: lv.lost for track, lv in (levels or {}).items()},
        "duration_ms": ((stopped or {}).get("summary") or {}).get("duration_ms"),
    }


def _fmt_ms(value: Any) -> str:
    if not isinstance(value, int | float):
        return "–"
    return f"{value / 1000:.2f} s"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return html.escape(str(value))


def _summary_html(records: Sequence[Record]) -> str:
    stopped = next((r for r in records if r.get("type") == "stream.stopped"), None)
    statuses = [r for r in records if str(r.get("type", "")).startswith("call.")]
    rows: list[tuple[str, str]] = []
    if stopped is not None:
        s = stopped.get("summary") or {}
        rows.append(
            ("ended", f"{_cell(stopped.get('reason'))} after {_fmt_ms(s.get('duration_ms'))}")
        )
        for speaker in sorted(set(s.get("talk_ms", {})) | set(s.get("turn_counts", {}))):
            talk = s.get("talk_ms", {}).get(speaker)
            ratio = s.get("talk_ratio", {}).get(speaker)
            turns = s.get("turn_counts", {}).get(speaker)
            share = f" ({ratio:.0%})" if isinstance(ratio, int | float) else ""
            rows.append((f"{speaker}", f"{_fmt_ms(talk)} of speech{share}, {_cell(turns)} turns"))
        rows.append(("overlap", _fmt_ms(s.get("overlap_ms"))))
        gaps = _cell(s.get("silence_incidents"))
        rows.append(("silence", f"{_fmt_ms(s.get('silence_ms'))}, {gaps} gaps over 4 s"))
        interruptions = s.get("interruptions") or {}
        if interruptions:
            rows.append(
                (
                    "interruptions",
                    ", ".join(f"{_cell(k)} {_cell(v)}" for k, v in interruptions.items()),
                )
            )
        latency = s.get("response_latency") or {}
        if latency.get("count"):
            rows.append(
                (
                    "response latency",
                    f"p50 {_fmt_ms(latency.get('p50_ms'))}, p95 {_fmt_ms(latency.get('p95_ms'))}, "
                    f"max {_fmt_ms(latency.get('max_ms'))} over {latency['count']} answers",
                )
            )
        lost = s.get("lost_ms") or {}
        rows.append(
            ("lost audio", ", ".join(f"{_cell(k)} {v} ms" for k, v in lost.items()) or "none")
        )
        rows.append(("diagnostics", _cell(s.get("diagnostics", 0))))
    if statuses:
        chain = " → ".join(
            html.escape(str(r.get("call_status") or r.get("type"))) for r in statuses
        )
        rows.append(("call status", chain))
    if not rows:
        return "<p>No stream.stopped record: the call has no summary (still open, or a crash).</p>"
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="summary">{body}</table>'


def _turns_html(turns: Sequence[Mapping[str, Any]], with_arousal: bool) -> str:
    head = (
        "<tr><th>#</th><th>speaker</th><th>start</th><th>end</th><th>speech</th>"
        "<th>end reason</th><th>gap</th><th>overlap</th><th>flags</th><th>dBFS</th>"
        "<th>f0 Hz</th><th>rate</th><th>lost</th>" + ("<th>arousal</th>" if with_arousal else "")
    ) + "</tr>"
    rows = []
    for t in turns:
        flags = " ".join(
            name
            for name, on in (
                ("barge-in", t.get("barge_in")),
                ("interrupted", t.get("interrupted")),
                ("backchannel", t.get("backchannel")),
            )
            if on
        )
        pitch = (t.get("pitch") or {}).get("median_hz")
        speech = t.get("speech_ms")
        rows.append(
            f'<tr class="turn {html.escape(str(t.get("speaker")))}" '
            f'data-turn-id="{html.escape(str(t.get("id")))}" '
            f'data-start-ms="{_cell(t.get("start_ms"))}" data-end-ms="{_cell(t.get("end_ms"))}">'
            f"<td>{_cell(t.get('index'))}</td><td>{_cell(t.get('speaker'))}</td>"
            f"<td>{_fmt_ms(t.get('start_ms'))}</td><td>{_fmt_ms(t.get('end_ms'))}</td>"
            f"<td>{_fmt_ms(speech)}</td><td>{_cell(t.get('end_reason'))}</td>"
            f"<td>{_cell(t.get('gap_before_ms'))}</td><td>{_cell(t.get('overlap_ms'))}</td>"
            f"<td>{flags}</td><td>{_cell((t.get('energy') or {}).get('mean_dbfs'))}</td>"
            f"<td>{_cell(pitch)}</td><td>{_cell(t.get('speech_rate_hz'))}</td>"
            f"<td>{_cell(t.get('lost_ms') or None)}</td>"
            + (f"<td>{_cell(_arousal(t))}</td>" if with_arousal else "")
            + "</tr>"
        )
    return f'<table class="turns" id="turn-table">{head}{"".join(rows)}</table>'


def build_report(
    records: Sequence[Record],
    levels: Mapping[str, TrackLevels] | None = None,
    *,
    title: str | None = None,
) -> str:
    """The HTML page of one call (see the module docstring).

    ``records``: one stream's records and its call's status events, JSON-shaped
    (``records_of_call``); ``levels``: per track, from ``levels_from_capture``, or ``None``
    for a page from records alone. Every string from the records is escaped; the data block
    cannot close its ``<script>``."""
    payload = _payload(records, levels)
    turns = sorted(
        (r for r in records if r.get("type") == "turn"),
        key=lambda t: (t.get("start_ms", 0), t.get("track", "")),
    )
    with_arousal = any(t["arousal"] is not None for t in payload["turns"])
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    data = data.replace("<", "\\u003c")  # JSON still; no tag, comment or end tag inside
    name = title or f"call {payload['call_sid'] or '?'}"
    source = "capture (audio levels measured)" if levels else "records only (no audio)"
    parts = {
        "TITLE": html.escape(name),
        "SUBTITLE": html.escape(f"stream {payload['stream_sid'] or '?'} · {source}"),
        "SUMMARY": _summary_html(records),
        "TURNS": _turns_html(turns, with_arousal),
        "DATA": data,
        "SCRIPT": _SCRIPT,
    }
    # One pass: text from the records is never scanned for placeholders.
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: parts[m.group(1)], _PAGE)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{{TITLE}}</title>
<style>
  :root { --caller: #2b6cb0; --agent: #dd6b20; --overlap: #805ad5; --lost: #e53e3e;
          --ink: #1a202c; --muted: #718096; --grid: #e2e8f0; }
  body { font: 14px/1.4 system-ui, -apple-system, "DejaVu Sans", sans-serif; color: var(--ink);
         margin: 16px 24px; background: #fff; }
  h1 { font-size: 20px; margin: 0; } .sub { color: var(--muted); margin: 2px 0 12px; }
  .bar { display: flex; gap: 8px; align-items: center; margin: 6px 0; flex-wrap: wrap; }
  button { font: inherit; padding: 2px 10px; border: 1px solid #cbd5e0; background: #f7fafc;
           border-radius: 4px; cursor: pointer; }
  #timeline { width: 100%; border: 1px solid var(--grid); border-radius: 6px; cursor: grab;
              user-select: none; touch-action: none; }
  .legend span { display: inline-flex; align-items: center; gap: 4px; margin-right: 12px;
                 color: var(--muted); }
  .legend i { display: inline-block; width: 14px; height: 10px; border-radius: 2px; }
  .cols { display: flex; gap: 32px; flex-wrap: wrap; align-items: flex-start; }
  table { border-collapse: collapse; margin: 8px 0; }
  th, td { padding: 3px 8px; text-align: left; border-bottom: 1px solid var(--grid); }
  table.summary th { color: var(--muted); font-weight: normal; }
  table.turns td:nth-child(n+3) { text-align: right; font-variant-numeric: tabular-nums; }
  tr.turn { cursor: pointer; } tr.turn:hover { background: #f7fafc; }
  tr.turn.caller td:first-child { border-left: 4px solid var(--caller); }
  tr.turn.agent td:first-child { border-left: 4px solid var(--agent); }
  text { font: 11px system-ui, "DejaVu Sans", sans-serif; fill: var(--ink); }
  text.lane { fill: var(--muted); }
</style>
</head>
<body>
<h1>{{TITLE}}</h1>
<div class="sub">{{SUBTITLE}}</div>
<div class="bar">
  <button id="zoom-in" title="zoom in (wheel)">+</button>
  <button id="zoom-out" title="zoom out">−</button>
  <button id="zoom-reset" title="whole call (double-click)">whole call</button>
  <span id="window" class="sub"></span>
</div>
<svg id="timeline" role="img" aria-label="call timeline"></svg>
<div class="legend bar">
  <span><i style="background:var(--caller)"></i>caller turn</span>
  <span><i style="background:var(--agent)"></i>agent turn</span>
  <span><i style="background:var(--ink);height:4px"></i>speech segment</span>
  <span><i style="background:var(--overlap)"></i>overlap</span>
  <span><i style="background:var(--lost)"></i>lost audio</span>
  <span>▼ barge-in</span><span>✕ interrupted</span>
  <span><i style="background:repeating-linear-gradient(45deg,#999 0 2px,#fff 2px 4px)"></i>
    backchannel</span>
  <span>◆ DTMF</span><span>▮ mark</span>
</div>
<div class="cols">
  <div><h2>Summary</h2>{{SUMMARY}}</div>
  <div><h2>Turns</h2>{{TURNS}}</div>
</div>
<script id="call-data" type="application/json">{{DATA}}</script>
<script>{{SCRIPT}}</script>
</body>
</html>
"""

# The renderer: draws the data block into the SVG for the visible window [t0, t1] (ms) and
# redraws on zoom and pan. Level traces are reduced to one min/max pair per pixel column.
_SCRIPT = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("call-data").textContent);
  const svg = document.getElementById("timeline");
  const NS = "http://www.w3.org/2000/svg";
  const COLOR = { caller: "#2b6cb0", agent: "#dd6b20", inbound: "#2b6cb0", outbound: "#dd6b20" };
  const SPEAKER = { inbound: "caller", outbound: "agent" };
  const LEFT = 90, RIGHT = 16, FLOOR = -80;
  const tracks = (D.tracks && D.tracks.length ? D.tracks : ["inbound"]).filter(
    (t) => t === "inbound" || t === "outbound");
  const hasArousal = D.turns.some((t) => t.arousal !== null);
  let end = D.duration_ms || 0, start = Infinity;
  for (const t of D.turns) { start = Math.min(start, t.start_ms); end = Math.max(end, t.end_ms); }
  for (const tr in D.levels) {
    const lv = D.levels[tr];
    start = Math.min(start, lv.origin_ms);
    end = Math.max(end, lv.origin_ms + lv.dbfs.length * lv.step_ms);
  }
  for (const e of D.events) { start = Math.min(start, e.at_ms); end = Math.max(end, e.at_ms); }
  if (!isFinite(start)) { start = 0; }
  if (end <= start) { end = start + 1000; }
  const FULL = [start, end];
  let t0 = FULL[0], t1 = FULL[1];

  // Lanes, top to bottom: inbound level, inbound turns, overlap, outbound turns, outbound
  // level, events, arousal.
  const lanes = [];
  const LEVEL_H = 64, TURN_H = 34;
  let y = 22;
  function lane(kind, track, h, label) { lanes.push({ kind, track, y, h, label }); y += h + 6; }
  if (tracks.includes("inbound")) {
    lane("level", "inbound", LEVEL_H, D.levels.inbound ? "caller dBFS" : "caller turn dB");
    lane("turns", "inbound", TURN_H, "caller");
  }
  if (tracks.length > 1) { lane("overlap", null, 10, "overlap"); }
  if (tracks.includes("outbound")) {
    lane("turns", "outbound", TURN_H, "agent");
    lane("level", "outbound", LEVEL_H, D.levels.outbound ? "agent dBFS" : "agent turn dB");
  }
  lane("events", null, 20, "marks/DTMF");
  if (hasArousal) { lane("arousal", null, 40, "arousal"); }
  const HEIGHT = y + 18;

  function el(name, attrs, parent, text) {
    const node = document.createElementNS(NS, name);
    for (const k in attrs) { node.setAttribute(k, attrs[k]); }
    if (text !== undefined) { node.textContent = text; }
    (parent || svg).appendChild(node);
    return node;
  }
  function tip(node, text) { el("title", {}, node, text); }
  function s(ms) { return (ms / 1000).toFixed(2) + " s"; }

  // Overlap spans: where speech segments of the two tracks intersect.
  const overlaps = [];
  const segs = { inbound: [], outbound: [] };
  for (const t of D.turns) { for (const g of t.segments) { (segs[t.track] || []).push(g); } }
  for (const a of segs.inbound) {
    for (const b of segs.outbound) {
      const lo = Math.max(a[0], b[0]), hi = Math.min(a[1], b[1]);
      if (hi > lo) { overlaps.push([lo, hi]); }
    }
  }

  function draw() {
    const width = Math.max(320, svg.clientWidth || 960);
    svg.setAttribute("viewBox", "0 0 " + width + " " + HEIGHT);
    svg.setAttribute("height", HEIGHT);
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    const span = t1 - t0, plotW = width - LEFT - RIGHT;
    const X = (ms) => LEFT + ((ms - t0) / span) * plotW;
    const visible = (a, b) => b >= t0 && a <= t1;
    const defs = el("defs", {});
    const hatch = el("pattern", { id: "hatch", width: 6, height: 6,
      patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" }, defs);
    el("rect", { width: 6, height: 6, fill: "#fff" }, hatch);
    el("rect", { width: 3, height: 6, fill: "#000", "fill-opacity": 0.25 }, hatch);
    const clip = el("clipPath", { id: "plot" }, defs);
    el("rect", { x: LEFT, y: 0, width: plotW, height: HEIGHT }, clip);

    // time axis: about one tick per 100 px at a round step
    const steps = [100, 200, 500, 1000, 2000, 5000, 10000, 15000, 30000, 60000, 120000, 300000];
    const step = steps.find((v) => (v / span) * plotW >= 90) || 600000;
    const axis = el("g", {});
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      el("line", { x1: X(t), x2: X(t), y1: 16, y2: HEIGHT - 16, stroke: "#edf2f7" }, axis);
      el("text", { x: X(t), y: 12, "text-anchor": "middle", class: "lane" }, axis,
        step < 1000 ? (t / 1000).toFixed(1) + " s" : Math.round(t / 1000) + " s");
    }
    const plot = el("g", { "clip-path": "url(#plot)" });
    for (const L of lanes) {
      el("text", { x: LEFT - 6, y: L.y + L.h / 2 + 4, "text-anchor": "end", class: "lane" },
        svg, L.label);
      el("line", { x1: LEFT, x2: width - RIGHT, y1: L.y + L.h, y2: L.y + L.h,
        stroke: "#e2e8f0" }, plot);
      if (L.kind === "level") { drawLevel(L, plot, X, plotW); }
      if (L.kind === "turns") { drawTurns(L, plot, X, visible); }
      if (L.kind === "overlap") {
        for (const o of overlaps) {
          if (!visible(o[0], o[1])) { continue; }
          tip(el("rect", { x: X(o[0]), y: L.y, width: Math.max(1, X(o[1]) - X(o[0])),
            height: L.h, fill: "#805ad5", class: "overlap" }, plot),
          "overlap " + s(o[0]) + "–" + s(o[1]));
        }
      }
      if (L.kind === "events") { drawEvents(L, plot, X, visible); }
      if (L.kind === "arousal") { drawArousal(L, plot, X, visible); }
    }
    document.getElementById("window").textContent =
      s(t0) + " – " + s(t1) + " (" + s(t1 - t0) + ")";
  }

  function drawLevel(L, parent, X, plotW) {
    const g = el("g", { class: "level", "data-track": L.track }, parent);
    const Y = (db) => L.y + L.h - ((Math.max(db, FLOOR) - FLOOR) / -FLOOR) * L.h;
    for (const db of [-60, -40, -20]) {
      el("line", { x1: LEFT, x2: LEFT + plotW, y1: Y(db), y2: Y(db), stroke: "#f1f5f9" }, g);
    }
    const lv = D.levels[L.track];
    const color = COLOR[L.track];
    if (lv && lv.dbfs.length) {
      const i0 = Math.max(0, Math.floor((t0 - lv.origin_ms) / lv.step_ms) - 1);
      const i1 = Math.min(lv.dbfs.length - 1, Math.ceil((t1 - lv.origin_ms) / lv.step_ms) + 1);
      const at = (i) => X(lv.origin_ms + (i + 0.5) * lv.step_ms);
      let d = "", band = "", open = false;
      if ((lv.step_ms / (t1 - t0)) * plotW >= 1) {
        // zoomed in: a point per frame, broken only where there is no audio
        for (let i = i0; i <= i1; i++) {
          const v = lv.dbfs[i];
          if (v === null) { open = false; continue; }
          d += (open ? "L" : "M") + at(i).toFixed(1) + "," + Y(v).toFixed(1);
          open = true;
        }
      } else {
        // zoomed out: the loudest and quietest frame of each pixel column
        const cols = Math.ceil(plotW);
        const lo = new Array(cols).fill(null), hi = new Array(cols).fill(null);
        for (let i = i0; i <= i1; i++) {
          const v = lv.dbfs[i];
          const c = Math.floor(at(i) - LEFT);
          if (v === null || c < 0 || c >= cols) { continue; }
          lo[c] = lo[c] === null ? v : Math.min(lo[c], v);
          hi[c] = hi[c] === null ? v : Math.max(hi[c], v);
        }
        for (let c = 0; c < cols; c++) {
          if (hi[c] === null) { open = false; continue; }
          d += (open ? "L" : "M") + (LEFT + c) + "," + Y(hi[c]).toFixed(1);
          band += "M" + (LEFT + c + 0.5) + "," + Y(hi[c]).toFixed(1) + "V" + Y(lo[c]).toFixed(1);
          open = true;
        }
      }
      el("path", { d: d, fill: "none", stroke: color, "stroke-width": 1.2, class: "trace" }, g);
      if (band) {
        el("path", { d: band, stroke: color, "stroke-opacity": 0.35, fill: "none" }, g);
      }
    } else {
      // records only: each turn's mean (bar) and p95 (tick) level
      for (const t of D.turns) {
        if (t.track !== L.track || t.mean_dbfs === null) { continue; }
        const x = X(t.start_ms), w = Math.max(1, X(t.end_ms) - x);
        tip(el("rect", { x: x, y: Y(t.mean_dbfs), width: w, height: L.y + L.h - Y(t.mean_dbfs),
          fill: color, "fill-opacity": 0.25 }, g), "mean " + t.mean_dbfs + " dBFS");
        if (t.p95_dbfs !== null) {
          el("line", { x1: x, x2: x + w, y1: Y(t.p95_dbfs), y2: Y(t.p95_dbfs), stroke: color }, g);
        }
      }
    }
    for (const span of (D.lost[L.track] || [])) {
      tip(el("rect", { x: X(span[0]), y: L.y, width: Math.max(2, X(span[1]) - X(span[0])),
        height: L.h, fill: "#e53e3e", "fill-opacity": 0.5, class: "lost" }, g),
      "lost audio " + s(span[0]) + "–" + s(span[1]));
    }
  }

  function drawTurns(L, parent, X, visible) {
    for (const t of D.turns) {
      if (t.track !== L.track || !visible(t.start_ms, t.end_ms)) { continue; }
      const color = COLOR[t.speaker] || COLOR[t.track];
      const g = el("g", { class: "turn", "data-turn-id": t.id, "data-speaker": t.speaker },
        parent);
      const x = X(t.start_ms), w = Math.max(2, X(t.end_ms) - x);
      el("rect", { x: x, y: L.y, width: w, height: L.h, rx: 3, fill: color,
        "fill-opacity": t.backchannel ? 0.35 : 0.8, stroke: color }, g);
      if (t.backchannel) {
        el("rect", { x: x, y: L.y, width: w, height: L.h, rx: 3, fill: "url(#hatch)" }, g);
      }
      for (const seg of t.segments) {
        el("rect", { x: X(seg[0]), y: L.y + L.h - 5, width: Math.max(1, X(seg[1]) - X(seg[0])),
          height: 4, fill: "#1a202c", "fill-opacity": 0.7 }, g);
      }
      if (t.lost_ms > 0) {
        el("rect", { x: x, y: L.y, width: w, height: 3, fill: "#e53e3e" }, g);
      }
      if (w > 24) {
        el("text", { x: x + 4, y: L.y + 14, fill: "#fff", style: "fill:#fff" }, g, "#" + t.index);
      }
      if (t.barge_in) {
        el("path", { d: "M" + (x - 5) + "," + (L.y - 7) + "h10l-5,7z", fill: "#1a202c" }, g);
      }
      if (t.interrupted) {
        const e = x + w;
        el("path", { d: "M" + (e - 4) + "," + (L.y - 8) + "l8,8M" + (e + 4) + "," + (L.y - 8) +
          "l-8,8", stroke: "#1a202c", "stroke-width": 2 }, g);
      }
      const flags = [t.barge_in && "barge-in", t.interrupted && "interrupted",
        t.backchannel && "backchannel"].filter(Boolean).join(", ");
      tip(g, t.speaker + " #" + t.index + "  " + s(t.start_ms) + "–" + s(t.end_ms) + "  " +
        t.end_reason + (flags ? "  [" + flags + "]" : "") +
        (t.lost_ms ? "  lost " + t.lost_ms + " ms" : "") +
        (t.arousal !== null ? "  arousal " + t.arousal : ""));
      g.addEventListener("click", () => focus(t.start_ms, t.end_ms));
    }
  }

  function drawEvents(L, parent, X, visible) {
    for (const e of D.events) {
      if (!visible(e.at_ms, e.at_ms)) { continue; }
      const x = X(e.at_ms), g = el("g", { class: e.kind }, parent);
      if (e.kind === "dtmf") {
        el("path", { d: "M" + x + "," + L.y + "l6,8l-6,8l-6,-8z", fill: "#2f855a" }, g);
        el("text", { x: x + 8, y: L.y + 13 }, g, e.label || "");
      } else {
        el("rect", { x: x - 2, y: L.y, width: 4, height: 16, fill: "#4a5568" }, g);
        el("text", { x: x + 5, y: L.y + 13, class: "lane" }, g, e.label || "");
      }
      tip(g, e.kind + " " + (e.label || "") + " at " + s(e.at_ms));
    }
  }

  function drawArousal(L, parent, X, visible) {
    const values = D.turns.filter((t) => t.arousal !== null).map((t) => t.arousal);
    const lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    const Y = (v) => L.y + L.h - (hi > lo ? (v - lo) / (hi - lo) : 0.5) * (L.h - 8) - 4;
    for (const t of D.turns) {
      if (t.arousal === null || !visible(t.start_ms, t.end_ms)) { continue; }
      const g = el("g", { class: "arousal" }, parent);
      el("line", { x1: X(t.start_ms), x2: X(t.end_ms), y1: Y(t.arousal), y2: Y(t.arousal),
        stroke: COLOR[t.speaker] || "#000", "stroke-width": 3 }, g);
      tip(g, t.speaker + " #" + t.index + " arousal " + t.arousal);
    }
  }

  function clampWindow(a, b) {
    const full = FULL[1] - FULL[0];
    let w = Math.min(Math.max(b - a, 200), full);
    a = Math.max(FULL[0], Math.min(a, FULL[1] - w));
    t0 = a; t1 = a + w;
  }
  function zoom(factor, atMs) {
    const at = atMs === undefined ? (t0 + t1) / 2 : atMs;
    clampWindow(at - (at - t0) * factor, at + (t1 - at) * factor);
    draw();
  }
  function focus(a, b) {
    const pad = Math.max(500, (b - a) * 0.25);
    clampWindow(a - pad, b + pad);
    draw();
  }
  function msAt(clientX) {
    const r = svg.getBoundingClientRect();
    const width = Math.max(320, svg.clientWidth || 960);
    const x = ((clientX - r.left) / r.width) * width;
    return t0 + ((x - LEFT) / (width - LEFT - RIGHT)) * (t1 - t0);
  }
  svg.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    zoom(ev.deltaY > 0 ? 1.25 : 0.8, msAt(ev.clientX));
  }, { passive: false });
  let drag = null;
  svg.addEventListener("pointerdown", (ev) => {
    drag = { x: ev.clientX, t0: t0, t1: t1 };
    svg.setPointerCapture(ev.pointerId);
  });
  svg.addEventListener("pointermove", (ev) => {
    if (!drag) { return; }
    const r = svg.getBoundingClientRect();
    const dms = ((ev.clientX - drag.x) / r.width) * (drag.t1 - drag.t0) * 1.1;
    clampWindow(drag.t0 - dms, drag.t1 - dms);
    draw();
  });
  svg.addEventListener("pointerup", () => { drag = null; });
  svg.addEventListener("dblclick", () => { t0 = FULL[0]; t1 = FULL[1]; draw(); });
  document.getElementById("zoom-in").onclick = () => zoom(0.5);
  document.getElementById("zoom-out").onclick = () => zoom(2);
  document.getElementById("zoom-reset").onclick = () => { t0 = FULL[0]; t1 = FULL[1]; draw(); };
  for (const row of document.querySelectorAll("tr.turn")) {
    row.addEventListener("click", () =>
      focus(Number(row.dataset.startMs), Number(row.dataset.endMs)));
  }
  window.addEventListener("resize", draw);
  // "#t=5-12.5": open on that window (seconds), e.g. a link to one moment of the call.
  const m = /^#t=([0-9.]+)-([0-9.]+)$/.exec(location.hash);
  if (m) { clampWindow(Number(m[1]) * 1000, Number(m[2]) * 1000); }
  draw();
  svg.setAttribute("data-rendered", String(D.turns.length));
})();
"""
