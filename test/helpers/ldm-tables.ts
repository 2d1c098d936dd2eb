/**
 * Tensor name → shape tables of single-file (ldm layout) checkpoints, built from the ldm networks'
 * structure (ldm/modules/diffusionmodules/openaimodel.py's UNetModel, model.py's Encoder/Decoder, CLIP
 * ViT-L/14 and OpenCLIP ViT-H/14): SD 1.5- and SD 2.1-shaped ones, and small ones for tests that write a file.
 */
export type Table = Map<string, number[]>;

/** ldm's UNetModel: ResBlocks and SpatialTransformers as openaimodel.py numbers them. */
export function unetTable(
  t: Table,
  o: { ch: number; mult: number[]; res: number; ctx: number; linear: boolean; inCh?: number },
) {
  const add = (n: string, s: number[]) => t.set(`model.diffusion_model.${n}`, s);
  const emb = o.ch * 4;
  const conv = (n: string, cout: number, cin: number, k: number) => {
    add(`${n}.weight`, k ? [cout, cin, k, k] : [cout, cin]);
    add(`${n}.bias`, [cout]);
  };
  const norm = (n: string, c: number) => {
    add(`${n}.weight`, [c]);
    add(`${n}.bias`, [c]);
  };
  const resblock = (n: string, cin: number, cout: number) => {
    norm(`${n}.in_layers.0`, cin);
    conv(`${n}.in_layers.2`, cout, cin, 3);
    conv(`${n}.emb_layers.1`, cout, emb, 0);
    norm(`${n}.out_layers.0`, cout);
    conv(`${n}.out_layers.3`, cout, cout, 3);
    if (cin !== cout) conv(`${n}.skip_connection`, cout, cin, 1);
  };
  const attention = (n: string, c: number) => {
    norm(`${n}.norm`, c);
    conv(`${n}.proj_in`, c, c, o.linear ? 0 : 1);
    const b = `${n}.transformer_blocks.0`;
    for (const a of ["attn1", "attn2"]) {
      add(`${b}.${a}.to_q.weight`, [c, c]);
      add(`${b}.${a}.to_k.weight`, [c, a === "attn1" ? c : o.ctx]);
      add(`${b}.${a}.to_v.weight`, [c, a === "attn1" ? c : o.ctx]);
      conv(`${b}.${a}.to_out.0`, c, c, 0);
    }
    conv(`${b}.ff.net.0.proj`, 8 * c, c, 0);
    conv(`${b}.ff.net.2`, c, 4 * c, 0);
    for (const k of [1, 2, 3]) norm(`${b}.norm${k}`, c);
    conv(`${n}.proj_out`, c, c, o.linear ? 0 : 1);
  };
  conv("time_embed.0", emb, o.ch, 0);
  conv("time_embed.2", emb, emb, 0);
  conv("input_blocks.0.0", o.ch, o.inCh ?? 4, 3);
  const attends = (l: number) => l < o.mult.length - 1;
  const skips = [o.ch];
  let cur = o.ch;
  let i = 1;
  o.mult.forEach((m, l) => {
    for (let r = 0; r < o.res; r++, i++) {
      resblock(`input_blocks.${i}.0`, cur, o.ch * m);
      cur = o.ch * m;
      if (attends(l)) attention(`input_blocks.${i}.1`, cur);
      skips.push(cur);
    }
    if (l < o.mult.length - 1) {
      conv(`input_blocks.${i++}.0.op`, cur, cur, 3);
      skips.push(cur);
    }
  });
  resblock("middle_block.0", cur, cur);
  attention("middle_block.1", cur);
  resblock("middle_block.2", cur, cur);
  i = 0;
  for (let l = o.mult.length - 1; l >= 0; l--) {
    for (let r = 0; r <= o.res; r++, i++) {
      const cout = o.ch * (o.mult[l] as number);
      resblock(`output_blocks.${i}.0`, cur + (skips.pop() as number), cout);
      cur = cout;
      if (attends(l)) attention(`output_blocks.${i}.1`, cur);
      if (l > 0 && r === o.res) conv(`output_blocks.${i}.${attends(l) ? 2 : 1}.conv`, cur, cur, 3);
    }
  }
  norm("out.0", o.ch);
  conv("out.2", 4, o.ch, 3);
}

/** ldm's AutoencoderKL as model.py names it; SD's: ch 128, ch_mult [1, 2, 4, 4], 2 resnets, z 4. */
export function vaeTable(
  t: Table,
  o: { ch: number; mult: number[]; res: number } = { ch: 128, mult: [1, 2, 4, 4], res: 2 },
) {
  const add = (n: string, s: number[]) => t.set(`first_stage_model.${n}`, s);
  const conv = (n: string, cout: number, cin: number, k: number) => {
    add(`${n}.weight`, [cout, cin, k, k]);
    add(`${n}.bias`, [cout]);
  };
  const norm = (n: string, c: number) => {
    add(`${n}.weight`, [c]);
    add(`${n}.bias`, [c]);
  };
  const resnet = (n: string, cin: number, cout: number) => {
    norm(`${n}.norm1`, cin);
    conv(`${n}.conv1`, cout, cin, 3);
    norm(`${n}.norm2`, cout);
    conv(`${n}.conv2`, cout, cout, 3);
    if (cin !== cout) conv(`${n}.nin_shortcut`, cout, cin, 1);
  };
  const mid = (n: string, c: number) => {
    resnet(`${n}.mid.block_1`, c, c);
    norm(`${n}.mid.attn_1.norm`, c);
    for (const p of ["q", "k", "v", "proj_out"]) conv(`${n}.mid.attn_1.${p}`, c, c, 1);
    resnet(`${n}.mid.block_2`, c, c);
  };
  const mult = o.mult.map((m) => o.ch * m);
  const last = mult.length - 1;
  conv("encoder.conv_in", o.ch, 3, 3);
  let cur = o.ch;
  mult.forEach((c, l) => {
    for (let r = 0; r < o.res; r++) {
      resnet(`encoder.down.${l}.block.${r}`, cur, c);
      cur = c;
    }
    if (l < last) conv(`encoder.down.${l}.downsample.conv`, c, c, 3);
  });
  mid("encoder", cur);
  norm("encoder.norm_out", cur);
  conv("encoder.conv_out", 8, cur, 3);
  conv("quant_conv", 8, 8, 1);
  conv("post_quant_conv", 4, 4, 1);
  conv("decoder.conv_in", cur, 4, 3);
  mid("decoder", cur);
  for (let l = last; l >= 0; l--) {
    for (let r = 0; r <= o.res; r++) {
      resnet(`decoder.up.${l}.block.${r}`, cur, mult[l] as number);
      cur = mult[l] as number;
    }
    if (l > 0) conv(`decoder.up.${l}.upsample.conv`, cur, cur, 3);
  }
  norm("decoder.norm_out", cur);
  conv("decoder.conv_out", 3, cur, 3);
}

/** SD 1.x: transformers' CLIPTextModel as the ldm files hold it; ViT-L/14: width 768, 12 layers, MLP 3072. */
export function clipTable(
  t: Table,
  o: { width: number; layers: number; mlp: number } = { width: 768, layers: 12, mlp: 3072 },
) {
  const p = "cond_stage_model.transformer.text_model.";
  const d = o.width;
  t.set(`${p}embeddings.token_embedding.weight`, [49408, d]);
  t.set(`${p}embeddings.position_embedding.weight`, [77, d]);
  t.set(`${p}embeddings.position_ids`, [1, 77]);
  for (let l = 0; l < o.layers; l++) {
    const n = `${p}encoder.layers.${l}.`;
    for (const x of ["q", "k", "v", "out"]) {
      t.set(`${n}self_attn.${x}_proj.weight`, [d, d]);
      t.set(`${n}self_attn.${x}_proj.bias`, [d]);
    }
    for (const x of ["layer_norm1", "layer_norm2"]) {
      t.set(`${n}${x}.weight`, [d]);
      t.set(`${n}${x}.bias`, [d]);
    }
    t.set(`${n}mlp.fc1.weight`, [o.mlp, d]);
    t.set(`${n}mlp.fc1.bias`, [o.mlp]);
    t.set(`${n}mlp.fc2.weight`, [d, o.mlp]);
    t.set(`${n}mlp.fc2.bias`, [d]);
  }
  t.set(`${p}final_layer_norm.weight`, [d]);
  t.set(`${p}final_layer_norm.bias`, [d]);
}

/** SD 2.x: OpenCLIP's text tower under `cond_stage_model.model.`; ViT-H/14: width 1024, 24 resblocks. */
export function openClipTable(
  t: Table,
  o: { width: number; layers: number; mlp: number } = { width: 1024, layers: 24, mlp: 4096 },
) {
  const p = "cond_stage_model.model.";
  const d = o.width;
  t.set(`${p}token_embedding.weight`, [49408, d]);
  t.set(`${p}positional_embedding`, [77, d]);
  t.set(`${p}text_projection`, [d, d]);
  t.set(`${p}logit_scale`, []);
  t.set(`${p}ln_final.weight`, [d]);
  t.set(`${p}ln_final.bias`, [d]);
  for (let l = 0; l < o.layers; l++) {
    const n = `${p}transformer.resblocks.${l}.`;
    t.set(`${n}attn.in_proj_weight`, [3 * d, d]);
    t.set(`${n}attn.in_proj_bias`, [3 * d]);
    t.set(`${n}attn.out_proj.weight`, [d, d]);
    t.set(`${n}attn.out_proj.bias`, [d]);
    for (const x of ["ln_1", "ln_2"]) {
      t.set(`${n}${x}.weight`, [d]);
      t.set(`${n}${x}.bias`, [d]);
    }
    t.set(`${n}mlp.c_fc.weight`, [o.mlp, d]);
    t.set(`${n}mlp.c_fc.bias`, [o.mlp]);
    t.set(`${n}mlp.c_proj.weight`, [d, o.mlp]);
    t.set(`${n}mlp.c_proj.bias`, [d]);
  }
}

/** What an ldm training checkpoint also holds: the EMA bookkeeping and the schedule's buffers. */
export function extras(t: Table) {
  t.set("model_ema.decay", []);
  t.set("model_ema.num_updates", []);
  t.set("alphas_cumprod", [1000]);
  t.set("betas", [1000]);
}

export function sd15(): Table {
  const t: Table = new Map();
  unetTable(t, { ch: 320, mult: [1, 2, 4, 4], res: 2, ctx: 768, linear: false });
  vaeTable(t);
  clipTable(t);
  extras(t);
  return t;
}

export function sd21(): Table {
  const t: Table = new Map();
  unetTable(t, { ch: 320, mult: [1, 2, 4, 4], res: 2, ctx: 1024, linear: true });
  vaeTable(t);
  openClipTable(t);
  extras(t);
  return t;
}
