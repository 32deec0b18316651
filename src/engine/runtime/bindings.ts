import { ortNode } from './ort-node.js';
import type { Runtime } from './runtime.js';

/**
 * The bindings of ONNX Runtime steerd can run on, by name (docs/architecture.md §7 Runtimes). A
 * runner is given a name, not a binding: its options cross into the engine thread as structured
 * clones, and a binding is code. A new binding is a module beside ort-node.ts, named here.
 */
const BINDINGS = { 'onnxruntime-node': ortNode } as const satisfies Record<string, Runtime>;

export type RuntimeName = keyof typeof BINDINGS;

export const RUNTIMES = Object.keys(BINDINGS) as RuntimeName[];

export const runtimeNamed = (name: RuntimeName): Runtime => BINDINGS[name];
