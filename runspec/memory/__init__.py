"""How much memory a run needs, per component, with the formula behind each line (the course's 显存资源估算).

Pure Python: the web process computes an estimate from a run spec and a worker's *memory profile* of the model
(`worker/training/memory.py` builds the model on the meta device and reports its parameters by kind, dtype and
trainability, one decoder layer's shape, what the method adds). Nothing here imports torch.

The modules, bottom up (each imports only those above it in this list, so the methods can sit in between):

* `units`: byte sizes, dtype widths, the framework's fixed costs, `EstimateError`, `human_bytes`;
* `facts`: the worker's profile, typed (`ModelFacts`), and how the run computes (`RunShape`);
* `report`: what an estimate says (`Line`, `Estimate`, `Suggestion`);
* `method_terms`: the activations a method adds (`MethodMemory`; LoRA-like adapters, ΔW-building LyCORIS layers,
  VeRA, IA³), which the methods' `memory` hooks in runspec/methods/ return;
* `weights`, `optimizer`, `activations`: the per-component formulas;
* `estimate` (`estimate_memory`), `suggestions` (what would make a run fit) and `measured` (the estimate beside a
  measurement): above the methods and the run spec, which they take as arguments.

No module below `estimate` imports runspec.methods or runspec.spec.

What is counted, in bytes (b = batch size, s = tokens per sample, h = hidden size, a = heads, L = layers,
f = FFN width, V = vocabulary, c = bytes of the compute dtype, r = bytes of the residual stream):

* weights: every unique parameter at its dtype; layers loaded in 4 bit cost 0.5 byte per parameter plus their
  quantization constants (one fp32 absmax per block of 64: 0.5 bit per parameter; with double quantization an
  8-bit absmax per block plus one fp32 constant per 256 blocks: 8/64 + 32/(64·256) ≈ 0.127 bit);
* trainable parameters, gradients for them only (same dtype), optimizer state (AdamW: two moments per trainable
  parameter at its dtype; 8-bit AdamW one byte each plus a scale per 256 values; SGD none);
* the dtypes are runspec.precision's (`resolve_spec_dtypes`; the profile itself is built in fp32 and re-typed by
  `facts.as_loaded`): a PEFT method's frozen base in the compute dtype (bf16 on a GPU), its adapters, prompt
  encoders and prefixes in fp32; full fine-tuning in mixed precision keeps fp32 master weights (2 moments and
  gradients in fp32: 16 bytes a parameter), pure_bf16 everything in bf16 (8 bytes a parameter with AdamW);
* mixed precision: the Trainer keeps the parameters in their loaded dtype and autocasts; weights stored in fp32
  get autocast's 16-bit copies, kept for backward; weights loaded in bf16 get none; peft casts an adapter's
  16-bit input up to its fp32 weights (a temporary of one layer; a CPU's dropout mask is then fp32);
* DoRA: the base and LoRA outputs of each adapted layer kept for the magnitude's gradient, and the weight norm
  rebuilt in each forward pass (an in×in identity and out×in temporaries, one layer at a time);
* Liger's kernels (training.liger_kernel; auto assumes a GPU worker has them for the architectures they cover):
  RMSNorm keeps its input and an fp32 rstd, SwiGLU the gate and up outputs, and the fused linear cross entropy
  materialises no logits (the hidden states' gradient and one chunk of logits instead);
* the length: training.max_length, or the longest batch the run will see when the dataset's token counts are
  known (a preview or tokenization), capped by max_length;
* activations per layer (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models": 34·s·b·h + 5·a·s²·b bytes per layer in 16 bit), re-derived from the layer's real shape and dtypes: the
  inputs saved by each norm and matmul, Q/K/V, the attention probabilities (eager attention keeps the fp32
  softmax and its 16-bit copy: the s² term; fused SDPA/flash attention does not), the FFN activation; gradient
  checkpointing keeps only each layer's input and recomputes one layer at a time;
* logits: b·s·V at the start of backward as the fp32 log-softmax kept for backward, its incoming gradient and
  the gradient it produces (12 bytes per logit);
* prompt methods: prompt tuning and P-Tuning put their virtual tokens before every sample (the sequence grows);
  prefix tuning and P-Tuning v2 add past key/values at every layer (attention over s + n keys);
* framework overhead: the CUDA context and the caching allocator's slack (not in max_memory_allocated, but
  the device has to hold it), or on a CPU the interpreter with torch and transformers loaded.

The peak is the largest of: the end of the forward pass, the start of backward (every activation plus the
logits' gradients, before most gradients exist: the Trainer frees gradients after each step), the backward of
one recomputed layer (gradient checkpointing), and the optimizer step (all gradients plus the optimizer's
scratch). Gradient accumulation keeps the gradients across micro-batches, so then they coexist with activations.
"""
