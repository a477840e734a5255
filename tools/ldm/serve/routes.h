// `ldm serve`'s routes on an httplib server (see routes.cpp).
#pragma once
#include <httplib.h>

#include <memory>
#include <string>

#include "tools/ldm/serve/api.h"
#include "tools/ldm/serve/worker.h"

namespace ldm::serve {

struct ServeOptions {
  std::string model, config, vocab, models_dir, lora_dir, embd_dir, taesd, precision = "fp32";
  std::string host = "127.0.0.1", api_key, cors, preview = "auto";
  int port = 7860;
  size_t queue = 8;
  size_t max_body = 32u << 20;  // bytes; larger bodies get 413
  Limits limits;
};

// Registers every route; the returned object must outlive the server.
std::shared_ptr<void> add_routes(httplib::Server& s, Worker& w, const ServeOptions& o);

}  // namespace ldm::serve
