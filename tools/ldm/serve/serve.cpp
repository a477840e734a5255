// ldm serve: the model loaded once behind the A1111 and OpenAI image APIs
// and a web page. Binds 127.0.0.1 unless told otherwise (and then only with
// an API key); SIGINT/SIGTERM stop it cleanly.
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include <filesystem>
#include <iostream>

#include "ldm/error.h"
#include "tools/ldm/commands.h"
#include "tools/ldm/serve/routes.h"

namespace ldm::cli {

namespace {
namespace fs = std::filesystem;

int g_signal_pipe[2] = {-1, -1};
void on_signal(int sig) {
  const unsigned char b = static_cast<unsigned char>(sig);
  (void)!write(g_signal_pipe[1], &b, 1);  // async-signal-safe
}

bool loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// A checkpoint name as clients send it ("x.safetensors", "x", "x.safetensors [hash]") -> a file in `dir`.
std::string resolve_model(const std::string& dir, std::string name) {
  if (auto sp = name.find(" ["); sp != std::string::npos) name.resize(sp);
  if (name.empty() || name.find('/') != std::string::npos || name.find('\\') != std::string::npos ||
      name.find("..") != std::string::npos)
    throw serve::HttpError(400, "invalid request", "sd_model_checkpoint: expected a file name in the models directory, got \"" + name + "\"");
  if (dir.empty()) throw serve::HttpError(404, "unknown model", name + ": no --models-dir to look in");
  for (const std::string& cand : {name, name + ".safetensors", name + ".ckpt"})
    if (fs::is_regular_file(fs::path(dir) / cand)) return (fs::path(dir) / cand).string();
  throw serve::HttpError(404, "unknown model", name + ": not in " + dir + " (see /sdapi/v1/sd-models)");
}

void serve_until_signal(serve::ServeOptions& o) {
  if (!loopback(o.host) && o.api_key.empty())
    throw Error("--host " + o.host + ": listening beyond this machine needs --api-key KEY (anyone who reaches the port could use it)");
  if (o.queue < 1) throw Error("--queue: expected at least 1");
  // SIGINT/SIGTERM: the handler (whichever thread takes it) writes the
  // signal to a pipe; one thread reads it and stops everything in order
  if (pipe(g_signal_pipe) != 0) throw Error("serve: cannot create the signal pipe");
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  const std::string startup = fs::path(o.model).filename().string();
  auto load = [&o, startup](const std::string& name) {
    pipeline::LoadOptions lo;
    const bool first = name == startup || name == fs::path(o.model).stem().string();
    lo.model = first ? o.model : resolve_model(o.models_dir, name);
    lo.config = first ? o.config : "";
    lo.vocab = o.vocab;
    lo.taesd = o.taesd;
    lo.lora_dir = o.lora_dir;
    lo.embd_dir = o.embd_dir;
    lo.precision = o.precision;
    return pipeline::Pipeline::load(lo);
  };
  serve::Worker worker(load, startup, o.queue, o.preview == "auto" ? (o.taesd.empty() ? "proj" : "taesd") : o.preview);
  o.limits.factor = pipeline::size_multiple(worker.pipeline()->facts());

  httplib::Server server;
  server.new_task_queue = [] { return new httplib::ThreadPool(32); };
  auto routes = serve::add_routes(server, worker, o);
  // httplib 0.11 listens with a backlog of 5: a burst of clients overflowed it
  // (the kernel's ListenOverflows) and some connections were reset unanswered.
  // The bound socket is listened on again with the system's maximum.
  socket_t listening = INVALID_SOCKET;
  server.set_socket_options([&listening](socket_t sock) {
    httplib::default_socket_options(sock);
    listening = sock;
  });
  if (o.port == 0) {
    o.port = server.bind_to_any_port(o.host);
    if (o.port <= 0) throw Error("--host " + o.host + ": cannot listen there");
  } else if (!server.bind_to_port(o.host.c_str(), o.port)) {
    throw Error("--port " + std::to_string(o.port) + ": cannot listen on " + o.host + " (in use?)");
  }
  if (::listen(listening, SOMAXCONN) != 0) throw Error("--port " + std::to_string(o.port) + ": cannot listen");
  std::cout << "ldm serve: " << startup << " on http://" << o.host << ":" << o.port << "/" << std::endl;
  std::thread stopper([&] {
    unsigned char sig = 0;
    while (read(g_signal_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    std::cerr << "ldm serve: " << (sig == SIGINT ? "SIGINT" : "SIGTERM") << ", stopping" << std::endl;
    worker.shutdown();  // queued jobs answered 503, the running one cancelled at its next step
    server.stop();
  });
  server.listen_after_bind();
  stopper.join();
}
}  // namespace

void add_serve(CLI::App& app) {
  auto o = std::make_shared<serve::ServeOptions>();
  auto* sub = app.add_subcommand("serve", "an image server: AUTOMATIC1111 and OpenAI image APIs and a web page");
  sub->add_option("-m,--model,--ckpt", o->model, "checkpoint (.ckpt, .safetensors or a run directory)")->required();
  sub->add_option("--config", o->config, "model config (default: detected)");
  sub->add_option("--vocab", o->vocab, "CLIP vocabulary (default: beside the model)");
  sub->add_option("--models-dir", o->models_dir, "checkpoints clients may switch to (sd_model_checkpoint)");
  sub->add_option("--lora-model-dir", o->lora_dir, "where <lora:name:mult> prompt tags are looked up");
  sub->add_option("--embd-dir", o->embd_dir, "textual-inversion embeddings (prompt words equal to file stems)");
  sub->add_option("--taesd", o->taesd, "TAESD weights: decode with them, and previews");
  sub->add_option("--preview", o->preview, "live previews in /progress: auto, taesd, proj, none")
      ->check(CLI::IsMember({"auto", "taesd", "proj", "none"}))
      ->capture_default_str();
  sub->add_option("--host", o->host, "address to listen on (other than loopback only with --api-key)")->capture_default_str();
  sub->add_option("--port", o->port, "port (0: any free one, printed)")->capture_default_str();
  sub->add_option("--api-key", o->api_key, "require Authorization: Bearer KEY on every route");
  sub->add_option("--queue", o->queue, "jobs waiting beyond the running one; more get 429")->capture_default_str();
  sub->add_option("--max-pixels", o->limits.max_pixels, "largest width x height of a request")->capture_default_str();
  sub->add_option("--cors", o->cors, "allowed browser origin (Access-Control-Allow-Origin)");
  sub->add_option("--precision", o->precision, "fp32 or bf16")->check(CLI::IsMember({"fp32", "bf16"}))->capture_default_str();
  sub->callback([o] { serve_until_signal(*o); });
}

}  // namespace ldm::cli
