/**
 * Hook points (docs/architecture.md §4): a site and a layer, where the graph takes steering and
 * gives the activation back. TransformerLens's names, the same for every family (a family's forward
 * pass places them, gpt2/body.ts): `resid_pre` = `blocks.l.hook_resid_pre` (l = 0..n_layer,
 * n_layer: before the final norm), `ln1` = `blocks.l.ln1.hook_normalized` (the attention's input),
 * `attn_out` = `blocks.l.hook_attn_out` (the attention's output projection, before the residual
 * add), `resid_mid` = `blocks.l.hook_resid_mid`, `ln2` = `blocks.l.ln2.hook_normalized` (the MLP's
 * input), `mlp_out` = `blocks.l.hook_mlp_out`; these five for l = 0..n_layer − 1.
 *
 * At each enabled hook the graph computes x ← x − ((x·Uᵀ)·Z) + s: `s` (`steer.*`, broadcastable to
 * [B, T, H]) is what the interventions add, and U, Z (`proj.*`, [B, K, H] each, K = 0 when unused)
 * are the row's ablations and clamps folded into one rank-K map by the engine (steer.ts).
 */
export const SITES = ['resid_pre', 'ln1', 'attn_out', 'resid_mid', 'ln2', 'mlp_out'] as const;
export type Site = (typeof SITES)[number];

export const isSite = (s: unknown): s is Site => (SITES as readonly unknown[]).includes(s);

/** The largest layer of a site: n_layer for `resid_pre` (before ln_f), n_layer − 1 for the others. */
export const maxLayer = (site: Site, nLayer: number) => (site === 'resid_pre' ? nLayer : nLayer - 1);

/** The steering input of a hook point. */
export const steerName = (site: Site, l: number) => (site === 'resid_pre' ? `steer.${l}` : `steer.${site}.${l}`);

/** The output that reads a hook point (after its steering). */
export const readName = (site: Site, l: number) => (site === 'resid_pre' ? `resid.${l}` : `${site}.${l}`);

/** The projection inputs of a hook point. */
export const projName = (site: Site, l: number, part: 'u' | 'z') => `proj.${site}.${l}.${part}`;

/** Every hook point of a model, for the given sites, in graph order. */
export function hookPoints(nLayer: number, sites: readonly Site[] = SITES): { site: Site; layer: number }[] {
  const out: { site: Site; layer: number }[] = [];
  for (let l = 0; l <= nLayer; l++)
    for (const site of SITES) if (sites.includes(site) && l <= maxLayer(site, nLayer)) out.push({ site, layer: l });
  return out;
}
