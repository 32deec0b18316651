import { readName } from '../model/hooks.js';
import type { Slot } from './slot.js';
import { buildSteer, siteOf } from './steer.js';

/** What a pass of slots' rows takes besides their tokens: their steering, and the reads telemetry needs. */

/** Hook-point outputs telemetry projects: every hook point the slots' interventions steer. */
export function telemetryReads(slots: Slot[]): string[] {
  const names = new Set<string>();
  for (const s of slots)
    if (s.twin) for (const iv of s.steering.interventions) names.add(readName(siteOf(iv), iv.layer));
  return [...names];
}

/** The `steer.{l}` inputs of a pass: rows' interventions at their tokens' positions (padding: none). */
export function steerRows(rows: Slot[], positions: number[][], T: number, H: number) {
  const padded = positions.map((p) => [...p, ...new Array(T - p.length).fill(-1)]);
  return buildSteer(
    rows.map((s) => s.steering),
    padded,
    H,
  );
}
