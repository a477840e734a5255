// The web page `ldm serve` answers GET / with: one self-contained file
// (HTML, CSS, JS; no build step, no CDN) over the A1111 API: txt2img with the
// hires fix, img2img from a file or a result, batches, checkpoints and LoRAs.
#pragma once

namespace ldm::serve {

inline constexpr const char* kPage = R"ldmpage(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ldm</title><link rel="icon" href="data:,">
<style>
 body{font-family:system-ui,sans-serif;margin:0;background:#16181d;color:#e6e6e6}
 header{padding:12px 20px;background:#0e0f12;font-weight:600;display:flex;gap:16px;align-items:center}
 header select{width:auto;max-width:320px}
 main{display:grid;grid-template-columns:minmax(280px,400px) 1fr;gap:20px;padding:20px}
 label{display:block;font-size:13px;margin:10px 0 4px;color:#aab}
 textarea,input,select{width:100%;box-sizing:border-box;background:#22252c;color:#eee;border:1px solid #3a3f4a;border-radius:6px;padding:7px}
 input[type=checkbox]{width:auto;margin-right:6px}
 textarea{height:70px;resize:vertical}
 .row{display:grid;grid-template-columns:1fr 1fr;gap:10px}
 details{margin-top:12px;border:1px solid #2f333c;border-radius:6px;padding:6px 10px}
 summary{cursor:pointer;font-size:14px;color:#cfd3dc}
 button{margin-top:14px;padding:9px 16px;border:0;border-radius:6px;background:#4f7cff;color:#fff;font-weight:600;cursor:pointer}
 button#interrupt{background:#a33}
 button.small{margin:4px 4px 0 0;padding:3px 8px;font-size:12px;font-weight:400;background:#2f3a55}
 button:disabled{opacity:.5;cursor:default}
 #bar{height:8px;background:#2a2e37;border-radius:4px;margin:14px 0;overflow:hidden}
 #bar div{height:100%;width:0;background:#4f7cff;transition:width .2s}
 #preview,#images img{max-width:100%;border-radius:6px;image-rendering:pixelated}
 #images{display:flex;flex-wrap:wrap;gap:10px}
 #images img{width:256px;cursor:pointer}
 #init-thumb{max-width:128px;border-radius:4px;display:none;margin-top:6px}
 pre{white-space:pre-wrap;font-size:12px;color:#aab}
 #error{color:#f77}
 .hint{font-size:12px;color:#889}
</style></head>
<body><header>ldm — latent diffusion in C++ <select id="model" title="checkpoint"></select>
 <label class="hint" for="pnginfo" style="margin:0">read the settings of a PNG:</label><input id="pnginfo" type="file" accept="image/png,image/jpeg" style="width:auto"></header>
<main><form id="form">
 <label for="prompt">Prompt</label><textarea id="prompt">a lighthouse at dusk</textarea>
 <div id="loras"></div>
 <label for="negative">Negative prompt</label><textarea id="negative"></textarea>
 <div class="row"><div><label for="width">Width</label><input id="width" type="number" value="512" step="8" min="8"></div>
  <div><label for="height">Height</label><input id="height" type="number" value="512" step="8" min="8"></div></div>
 <div class="row"><div><label for="steps">Steps</label><input id="steps" type="number" value="20" min="1" max="1000"></div>
  <div><label for="cfg">CFG scale</label><input id="cfg" type="number" value="7" step="0.5"></div></div>
 <div class="row"><div><label for="sampler">Sampler</label><select id="sampler"></select></div>
  <div><label for="seed">Seed (-1: random)</label><input id="seed" type="number" value="-1"></div></div>
 <div class="row"><div><label for="batch">Batch size</label><input id="batch" type="number" value="1" min="1"></div>
  <div><label for="count">Batch count</label><input id="count" type="number" value="1" min="1"></div></div>
 <div class="row"><div><label for="clip-skip">Clip skip (1: none)</label><input id="clip-skip" type="number" value="1" min="1" max="12"></div><div></div></div>
 <details id="hires-box"><summary>Hires fix</summary>
  <label><input id="hires" type="checkbox">generate, enlarge, then img2img at the larger size</label>
  <div class="row"><div><label for="hr-upscaler">Upscaler</label><select id="hr-upscaler"></select></div>
   <div><label for="hr-scale">Upscale by</label><input id="hr-scale" type="number" value="2" step="0.25" min="1" max="4"></div></div>
  <div class="row"><div><label for="hr-strength">Denoising strength</label><input id="hr-strength" type="number" value="0.7" step="0.05" min="0" max="1"></div>
   <div><label for="hr-steps">Hires steps (0: same)</label><input id="hr-steps" type="number" value="0" min="0"></div></div>
 </details>
 <details id="img2img-box"><summary>Image to image</summary>
  <input id="init" type="file" accept="image/png,image/jpeg,image/bmp">
  <img id="init-thumb" alt="init image"><div class="hint">or click a result to start from it</div>
  <div class="row"><div><label for="strength">Denoising strength</label><input id="strength" type="number" value="0.75" step="0.05" min="0" max="1"></div>
   <div><button class="small" id="clear-init" type="button">Clear image</button></div></div>
 </details>
 <button id="generate" type="submit">Generate</button> <button id="interrupt" type="button" disabled>Interrupt</button>
 <div id="bar"><div></div></div><div id="status">idle</div><div id="error"></div>
</form>
<section><img id="preview" alt=""><div id="images"></div><pre id="info"></pre></section></main>
<script>
const $ = id => document.getElementById(id);
async function api(path, body) {
  const r = await fetch(path, body === undefined ? {} : {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
  const j = await r.json();
  if (!r.ok) throw new Error(j.detail || j.error || r.status);
  return j;
}
function fill(select, names, value) {
  for (const n of names) { const o = document.createElement('option'); o.textContent = n; select.appendChild(o); }
  if (value !== undefined) select.value = value;
}
api('/sdapi/v1/samplers').then(list => fill($('sampler'), list.map(s => s.name), 'Euler a'));
Promise.all([api('/sdapi/v1/latent-upscale-modes'), api('/sdapi/v1/upscalers')])
  .then(([a, b]) => fill($('hr-upscaler'), a.concat(b).map(u => u.name), 'Latent'));
let checkpoint = '';
Promise.all([api('/sdapi/v1/sd-models'), api('/sdapi/v1/options')]).then(([models, opts]) => {
  checkpoint = opts.sd_model_checkpoint;
  if (opts.CLIP_stop_at_last_layers) $('clip-skip').value = opts.CLIP_stop_at_last_layers;
  fill($('model'), models.map(m => m.title), models.some(m => m.title === checkpoint) ? checkpoint : undefined);
});
api('/sdapi/v1/loras').then(list => {
  for (const l of list) {
    const b = document.createElement('button');
    b.type = 'button'; b.className = 'small'; b.textContent = l.name; b.title = 'add <lora:' + l.name + ':1> to the prompt';
    b.onclick = () => { $('prompt').value += ' <lora:' + l.name + ':1>'; };
    $('loras').appendChild(b);
  }
});
let initImage = null;  // a data: URL; set, it makes the request an img2img one
function setInit(url) {
  initImage = url;
  $('init-thumb').style.display = url ? 'block' : 'none';
  if (url) { $('init-thumb').src = url; $('img2img-box').open = true; } else $('init-thumb').removeAttribute('src');
}
$('init').onchange = () => {
  const f = $('init').files[0];
  if (!f) return;
  const rd = new FileReader();
  rd.onload = () => setInit(rd.result);
  rd.readAsDataURL(f);
};
$('clear-init').onclick = () => { $('init').value = ''; setInit(null); };
// A1111's PNG Info -> txt2img: the settings an image carries, into the form
$('pnginfo').onchange = () => {
  const f = $('pnginfo').files[0];
  if (!f) return;
  const rd = new FileReader();
  rd.onload = async () => {
    try {
      const p = (await api('/sdapi/v1/png-info', {image: rd.result})).parameters;
      if (!p.Prompt && !p.Steps) throw new Error('this image carries no generation settings');
      const set = (id, v) => { if (v !== undefined) $(id).value = v; };
      set('prompt', p.Prompt); set('negative', p['Negative prompt'] || ''); set('steps', p.Steps);
      set('cfg', p['CFG scale']); set('seed', p.Seed); set('clip-skip', p['Clip skip'] || 1); set('width', p['Size-1']); set('height', p['Size-2']);
      if (p.Sampler && [...$('sampler').options].some(o => o.text === p.Sampler)) $('sampler').value = p.Sampler;
      $('hires').checked = p['Hires upscale'] !== undefined;
      if ($('hires').checked) { set('hr-scale', p['Hires upscale']); set('hr-strength', p['Denoising strength']); set('hr-upscaler', p['Hires upscaler']); }
      $('error').textContent = '';
    } catch (e) { $('error').textContent = e.message; }
  };
  rd.readAsDataURL(f);
};
async function poll() {
  try {
    const p = await api('/sdapi/v1/progress');
    $('bar').firstElementChild.style.width = (100 * p.progress).toFixed(0) + '%';
    $('status').textContent = p.textinfo;
    if (p.current_image) $('preview').src = 'data:image/png;base64,' + p.current_image;
  } catch (e) {}
}
function request() {
  const body = {prompt: $('prompt').value, negative_prompt: $('negative').value,
    width: +$('width').value, height: +$('height').value, steps: +$('steps').value, cfg_scale: +$('cfg').value,
    sampler_name: $('sampler').value, seed: +$('seed').value, batch_size: +$('batch').value, n_iter: +$('count').value};
  body.override_settings = {CLIP_stop_at_last_layers: +$('clip-skip').value};
  if ($('model').value && $('model').value !== checkpoint) body.override_settings.sd_model_checkpoint = $('model').value;
  if (initImage) return ['/sdapi/v1/img2img', Object.assign(body, {init_images: [initImage], denoising_strength: +$('strength').value})];
  if ($('hires').checked)
    Object.assign(body, {enable_hr: true, hr_upscaler: $('hr-upscaler').value, hr_scale: +$('hr-scale').value,
      denoising_strength: +$('hr-strength').value, hr_second_pass_steps: +$('hr-steps').value});
  return ['/sdapi/v1/txt2img', body];
}
$('interrupt').onclick = () => api('/sdapi/v1/interrupt', {});
$('form').onsubmit = async ev => {
  ev.preventDefault();
  $('error').textContent = ''; $('generate').disabled = true; $('interrupt').disabled = false;
  $('images').innerHTML = ''; $('info').textContent = '';
  const polling = setInterval(poll, 500);
  try {
    const [path, body] = request();
    const j = await api(path, body);
    if (body.override_settings.sd_model_checkpoint) checkpoint = body.override_settings.sd_model_checkpoint;
    for (const b64 of j.images) {
      const img = document.createElement('img');
      img.src = 'data:image/png;base64,' + b64; img.className = 'result'; img.title = 'click: start image to image from this one';
      img.onclick = () => setInit(img.src);
      $('images').appendChild(img);
    }
    $('info').textContent = JSON.parse(j.info).infotexts.join('\n\n');
    $('preview').removeAttribute('src');
    $('bar').firstElementChild.style.width = '100%'; $('status').textContent = 'done';
  } catch (e) { $('error').textContent = e.message; $('status').textContent = 'idle'; }
  clearInterval(polling); $('generate').disabled = false; $('interrupt').disabled = true;
};
</script></body></html>
)ldmpage";

}  // namespace ldm::serve
