// @ts-check
// The shapes of the API's requests and answers that the playground uses, as the routes send them
// (the OpenAPI document at /openapi.json is the full reference). Types only: nothing here runs, and
// the page never loads this file; the other modules import its types for the checker.

/** @typedef {'all' | 'prompt' | 'generated' | 'front'} Positions */
/** @typedef {'absolute' | 'resid_norm'} Unit */

/**
 * The error body of every refused request.
 * @typedef {{ error?: { code?: string, message?: string, details?: Record<string, unknown> } }} ErrorBody
 */

/**
 * GET /v1/model (every field may be absent).
 * @typedef {object} ModelInfo
 * @property {string} [id]
 * @property {string} [name]
 * @property {boolean} [random_weights] a generated checkpoint: its text is nonsense
 * @property {boolean} [chat_template] the checkpoint has a chat template: the chat box serves it
 * @property {number} n_layer hook points run 0..n_layer
 * @property {number} [n_embd]
 * @property {number} [n_head]
 * @property {number} [n_positions]
 * @property {string} [provider]
 * @property {Record<string, number>} [limits] `max_new_tokens` among them
 * @property {{ text?: string, layers?: LayerNorm[] } | null} [resid_norms] null until measured
 */

/** @typedef {{ layer?: number, mean?: number, median?: number, max?: number }} LayerNorm */

/**
 * A stored vector, as GET /v1/vectors lists it and POST /v1/vectors answers.
 * @typedef {object} VectorMeta
 * @property {string} name
 * @property {'direction' | 'sequence'} [kind]
 * @property {number | null} [layer] the layer it was made at, if any
 * @property {string} [site]
 * @property {number} norm
 * @property {string} [hash]
 */

/** @typedef {{ data?: VectorMeta[] }} VectorList */

/**
 * POST /v1/vectors with a recipe: the difference of two prompts' activations at `layer`.
 * @typedef {object} RecipeRequest
 * @property {string} name
 * @property {{ kind: 'diff', layer: number | undefined, positive: string, negative: string, normalize: boolean }} recipe
 */

/**
 * The sampling fields /v1/generate and /v1/sweep share; the server's defaults where absent.
 * @typedef {object} Sampling
 * @property {number} [max_new_tokens]
 * @property {number} [temperature]
 * @property {number} [top_k]
 * @property {number} [top_p]
 * @property {number} [seed]
 */

/**
 * The intervention fields not every steerd takes (offered where its OpenAPI document lists them).
 * @typedef {{ site?: string, op?: string }} OptionalFields
 */

/**
 * One intervention of a /v1/generate request: a stored vector by name.
 * @typedef {{ vector: string, layer: number | undefined, coeff: number | undefined, unit: string, positions: string } & OptionalFields} Intervention
 */

/**
 * POST /v1/generate as the playground sends it: telemetry on, compared with the unsteered run.
 * @typedef {Sampling & { prompt: string, interventions: Intervention[], telemetry: boolean, compare: boolean }} GenerateRequest
 */

/**
 * One generated token; the telemetry fields come with `telemetry: true`.
 * @typedef {object} Token
 * @property {number} [id]
 * @property {string} text
 * @property {number} [logprob]
 * @property {number} [baseline_logprob] log p(token) under the unsteered model, same prefix
 * @property {number} [kl] KL(steered ‖ unsteered) at the position that chose it, nats
 * @property {boolean} [top1_flip] the two distributions' most likely tokens differ
 * @property {(number | null)[]} [projections] per intervention; null for a sequence
 */

/** @typedef {{ mean_kl: number, max_kl: number, top1_flips: number, logprob_delta: number }} Telemetry */

/**
 * An intervention as it was applied, echoed in the answer.
 * @typedef {object} AppliedIntervention
 * @property {string | null} [vector] its name (null: values or a hash)
 * @property {number} [layer]
 * @property {string} [site]
 * @property {string} [op]
 * @property {number} [coeff]
 * @property {string} [unit]
 * @property {number} [applied_coeff] the multiplier applied to the stored values
 * @property {number} [applied_norm] the norm of what was added
 */

/**
 * What ran, to be run again by POST /v1/replay; the playground keeps it whole and sends it back.
 * @typedef {{ steerd: string, model: { id: string, fingerprint: string, graph_hash: string }, preset?: string, runs: Record<string, unknown>[] }} Receipt
 */

/** @typedef {{ text?: string, tokens?: Token[], finish_reason?: string, telemetry?: Telemetry }} Completion */

/**
 * The answer to /v1/generate: with `stream: true`, its `done` event, the tokens having come one by one.
 * @typedef {Completion & { id?: string, model?: string, seed?: number, timings?: { total_ms?: number }, interventions?: AppliedIntervention[], baseline?: Completion, receipt?: Receipt }} GenerateResponse
 */

/**
 * The server-sent events of a streamed /v1/generate: a `token` as each is chosen, `text` held back
 * (part of a character) released at the end, then `done`. An `error` event ends a failed stream.
 * @typedef {{ event: 'token', data: Token } | { event: 'text', data: { text: string } } | { event: 'done', data: GenerateResponse }} GenerateEvent
 */

/** @typedef {{ role: 'system' | 'user' | 'assistant', content: string }} ChatMessage */

/**
 * POST /v1/chat/completions, as the chat box sends it (streamed).
 * @typedef {object} ChatRequest
 * @property {ChatMessage[]} messages
 * @property {number} [max_tokens]
 * @property {number} [temperature]
 * @property {number} [top_p]
 * @property {number} [seed]
 * @property {Intervention[]} interventions
 */

/**
 * A chunk of a streamed chat completion.
 * @typedef {{ choices: { index: number, delta: { role?: string, content?: string }, finish_reason: string | null }[] }} ChatChunk
 */

/**
 * POST /v1/sweep: the vector at each layer × coeff, one batched call.
 * @typedef {Sampling & OptionalFields & { prompt: string, vector: string, layers: number[], coeffs: number[], unit: string, positions: string }} SweepRequest
 */

/** @typedef {Completion & { layer: number, coeff: number, seed?: number }} SweepCell */

/**
 * The answer to /v1/sweep.
 * @typedef {{ id?: string, cells: SweepCell[], baseline?: Completion, receipt?: Receipt }} SweepResponse
 */

/**
 * The answer to POST /v1/replay: the first run's tokens again, and whether every run matched.
 * @typedef {{ identical: boolean, first_divergence: number | null, tokens: number[] }} ReplayResponse
 */

/**
 * The parts of the OpenAPI document the playground reads: which optional intervention fields there are.
 * @typedef {object} OpenApiDocument
 * @property {{ schemas?: Record<string, { properties?: Record<string, { enum?: unknown[] }> }> }} [components]
 * @property {Record<string, Record<string, { requestBody?: { content?: Record<string, { schema?: { properties?: Record<string, unknown> } }> } }>>} [paths]
 */

export {};
