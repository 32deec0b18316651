/** The ONNX versions every steerd graph is written for, and the builder's version in their metadata. */

/** Recorded in the graphs' metadata; informational (rebuilds are decided by content). */
export const BUILDER_VERSION = '2';
export const OPSET = 21;
export const IR_VERSION = 10;
