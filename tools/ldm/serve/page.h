// The web page `ldm serve` answers GET / with: one self-contained file
// (HTML, CSS, JS; no build step, no CDN) over the A1111 API.
#pragma once

namespace ldm::serve {

inline constexpr const char* kPage = R"ldmpage(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ldm</title>
<style>
 body{font-family:system-ui,sans-serif;margin:0;background:#16181d;color:#e6e6e6}
 header{padding:12px 20px;background:#0e0f12;font-weight:600}
 main{display:grid;grid-template-columns:minmax(280px,380px) 1fr;gap:20px;padding:20px}
 label{display:block;font-size:13px;margin:10px 0 4px;color:#aab}
 textarea,input,select{width:100%;box-sizing:border-box;background:#22252c;color:#eee;border:1px solid #3a3f4a;border-radius:6px;padding:7px}
 textarea{height:70px;resize:vertical}
 .row{display:grid;grid-template-columns:1fr 1fr;gap:10px}
 button{margin-top:14px;padding:9px 16px;border:0;border-radius:6px;background:#4f7cff;color:#fff;font-weight:600;cursor:pointer}
 button#interrupt{background:#a33}
 button:disabled{opacity:.5;cursor:default}
 #bar{height:8px;background:#2a2e37;border-radius:4px;margin:14px 0;overflow:hidden}
 #bar div{height:100%;width:0;background:#4f7cff;transition:width .2s}
 #preview,#images img{max-width:100%;border-radius:6px;image-rendering:pixelated}
 #images{display:flex;flex-wrap:wrap;gap:10px}
 #images img{width:256px}
 pre{white-space:pre-wrap;font-size:12px;color:#aab}
 #error{color:#f77}
</style></head>
<body><header>ldm — latent diffusion in C++</header>
<main><form id="form">
 <label for="prompt">Prompt</label><textarea id="prompt">a lighthouse at dusk</textarea>
 <label for="negative">Negative prompt</label><textarea id="negative"></textarea>
 <div class="row"><div><label for="width">Width</label><input id="width" type="number" value="512" step="8" min="8"></div>
  <div><label for="height">Height</label><input id="height" type="number" value="512" step="8" min="8"></div></div>
 <div class="row"><div><label for="steps">Steps</label><input id="steps" type="number" value="20" min="1" max="1000"></div>
  <div><label for="cfg">CFG scale</label><input id="cfg" type="number" value="7" step="0.5"></div></div>
 <div class="row"><div><label for="sampler">Sampler</label><select id="sampler"></select></div>
  <div><label for="seed">Seed (-1: random)</label><input id="seed" type="number" value="-1"></div></div>
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
api('/sdapi/v1/samplers').then(list => {
  for (const s of list) { const o = document.createElement('option'); o.textContent = s.name; $('sampler').appendChild(o); }
  $('sampler').value = 'Euler a';
});
let polling = null;
async function poll() {
  try {
    const p = await api('/sdapi/v1/progress');
    $('bar').firstElementChild.style.width = (100 * p.progress).toFixed(0) + '%';
    $('status').textContent = p.textinfo;
    if (p.current_image) $('preview').src = 'data:image/png;base64,' + p.current_image;
  } catch (e) {}
}
$('interrupt').onclick = () => api('/sdapi/v1/interrupt', {});
$('form').onsubmit = async ev => {
  ev.preventDefault();
  $('error').textContent = ''; $('generate').disabled = true; $('interrupt').disabled = false;
  polling = setInterval(poll, 500);
  try {
    const j = await api('/sdapi/v1/txt2img', {prompt: $('prompt').value, negative_prompt: $('negative').value,
      width: +$('width').value, height: +$('height').value, steps: +$('steps').value, cfg_scale: +$('cfg').value,
      sampler_name: $('sampler').value, seed: +$('seed').value});
    $('images').innerHTML = '';
    for (const b64 of j.images) { const img = document.createElement('img'); img.src = 'data:image/png;base64,' + b64; img.className = 'result'; $('images').appendChild(img); }
    $('info').textContent = JSON.parse(j.info).infotexts.join('\n\n');
    $('preview').removeAttribute('src');
    $('bar').firstElementChild.style.width = '100%'; $('status').textContent = 'done';
  } catch (e) { $('error').textContent = e.message; $('status').textContent = 'idle'; }
  clearInterval(polling); $('generate').disabled = false; $('interrupt').disabled = true;
};
</script></body></html>
)ldmpage";

}  // namespace ldm::serve
