import { hookPoints, projName, readName, type Site, steerName } from './hooks.js';
import { DataType } from './onnx-proto.js';
import { type GraphWriter, ints } from './onnx-writer.js';

/** Applies hook point (site, l) to the activation `x` [B, T, H]; returns the activation after it. */
export type Hook = (site: Site, l: number, x: string) => string;

/**
 * The graph side of hook points (docs/architecture.md §4), the same for every family: the enabled
 * points' steering inputs and read outputs, and what the graph computes there. A family's forward
 * pass only decides where each site sits (gpt2/body.ts). Sites not in `sites` pass through.
 */
export function hookWiring(
  g: GraphWriter,
  nLayer: number,
  H: number,
  sites: readonly Site[],
  /** Each hook point is a graph output (false: the caller reads them, by their names). */
  hookOutputs: boolean,
): Hook {
  for (const { site, layer } of hookPoints(nLayer, sites)) {
    // any rank up to 3 that broadcasts against [B, T, H]: the shape is left open on purpose
    g.input(steerName(site, layer), DataType.FLOAT);
    g.input(projName(site, layer, 'u'), DataType.FLOAT, [`pb_${site}_${layer}`, `pk_${site}_${layer}`, H]);
    g.input(projName(site, layer, 'z'), DataType.FLOAT, [`pb_${site}_${layer}`, `pk_${site}_${layer}`, H]);
    if (hookOutputs) g.output(readName(site, layer), DataType.FLOAT, ['batch', 'seq', H]);
  }
  // x ← x − ((x·Uᵀ)·Z) + s (hooks.ts)
  return (site, l, x) => {
    if (!sites.includes(site)) return x;
    const p = g.op1('MatMul', [x, g.op1('Transpose', [projName(site, l, 'u')], [ints('perm', [0, 2, 1])])]); // [B, T, K]
    const d = g.op1('MatMul', [p, projName(site, l, 'z')]); // [B, T, H]: zero when K = 0
    return g.op1('Add', [g.op1('Sub', [x, d]), steerName(site, l)], [], readName(site, l)); // [B, T, H]
  };
}
