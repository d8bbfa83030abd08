// `extrafs docker attach IMAGE... --mount MOUNTPOINT [--data-root DIR]` and
// `extrafs docker detach IMAGE... [--data-root DIR]` (the work is in store/attach.cc and store/detach.cc).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>

#include "tools/commands.h"
#include "store/attach.h"
#include "store/data_root.h"
#include "store/detach.h"
#include "store/dockerd_probe.h"

namespace extrafs::tools {

namespace {

using store::kDefaultDataRoot;

std::string short_id(const std::string& id) { return id.substr(id.find(':') + 1, 12); }

struct DockerArgs {
  std::vector<std::string> images;
  std::string mount;
  std::string data_root = kDefaultDataRoot;
};

// Validates the references; 0 or the usage exit code after printing one line.
int check_refs(const std::vector<std::string>& images) {
  for (const auto& i : images) {
    auto r = store::familiar_ref(i);
    if (!r.ok()) return fail(r.error().message, 2);
  }
  return 0;
}

int run_attach(const DockerArgs& a) {
  if (int rc = check_refs(a.images)) return rc;
  if (a.data_root.empty()) return fail("--data-root must not be empty", 2);
  if (auto m = store::resolve_extrafs_mount(a.mount); !m.ok()) return fail(m.error().message);
  if (auto st = store::check_overlay2_data_root(a.data_root); !st.ok()) return fail(st.error().message);
  if (auto st = store::check_dockerd_stopped(a.data_root); !st.ok()) return fail("cannot attach: " + st.error().message);
  auto res = store::attach_images(a.mount, a.data_root, a.images);
  if (!res.ok()) return fail(res.error().message);
  for (const auto& r : *res) {
    const bool changed = r.layers_created || r.layers_repaired || r.config_written || r.tag_written;
    if (!changed) {
      std::printf("%s (%s) already attached: %d layers present\n", r.ref.c_str(), short_id(r.image_id).c_str(), r.layers);
      continue;
    }
    std::printf("attached %s (%s): %d layers, %d new, %d already present", r.ref.c_str(), short_id(r.image_id).c_str(),
                r.layers, r.layers_created, r.layers_present);
    if (r.layers_repaired) std::printf(", %d repaired", r.layers_repaired);
    if (!r.previous_id.empty()) std::printf("; the tag pointed at %s before", short_id(r.previous_id).c_str());
    std::printf("\n");
  }
  return 0;
}

int run_detach(const DockerArgs& a) {
  if (int rc = check_refs(a.images)) return rc;
  if (a.data_root.empty()) return fail("--data-root must not be empty", 2);
  if (auto st = store::check_dockerd_stopped(a.data_root); !st.ok()) return fail("cannot detach: " + st.error().message);
  for (const auto& i : a.images) {
    auto r = store::detach_image(a.data_root, i);
    if (!r.ok()) return fail(r.error().message);
    std::printf("detached %s (%s): tag%s and %zu layers removed%s%s\n", r->ref.c_str(), short_id(r->image_id).c_str(),
                r->config_removed ? ", image config" : "", r->removed_layers.size(),
                r->config_removed ? "" : "; image config kept: ", r->config_removed ? "" : r->note.c_str());
    for (const auto& k : r->kept_layers) std::printf("  kept layer %s\n", k.c_str());
  }
  return 0;
}

}  // namespace

void add_docker_command(CLI::App& app, int* exit_code) {
  auto* docker = app.add_subcommand("docker", "register images of an extrafs mount with a stock dockerd (overlay2)");
  docker->require_subcommand(1);

  auto attach_args = std::make_shared<DockerArgs>();
  auto* attach = docker->add_subcommand(
      "attach", "register IMAGE(s) served by an extrafs mount in a dockerd data-root (dockerd must be stopped)");
  attach->add_option("IMAGE", attach_args->images, "name:tag as docker shows it")->required();
  attach->add_option("--mount", attach_args->mount, "the extrafs mount serving the images")->required();
  attach->add_option("--data-root", attach_args->data_root, "the dockerd data-root")->capture_default_str();
  attach->callback([attach_args, exit_code] { *exit_code = run_attach(*attach_args); });

  auto detach_args = std::make_shared<DockerArgs>();
  auto* detach = docker->add_subcommand(
      "detach", "remove IMAGE(s) attached earlier, and whatever of them nothing else uses (dockerd must be stopped)");
  detach->add_option("IMAGE", detach_args->images, "name:tag as docker shows it")->required();
  detach->add_option("--data-root", detach_args->data_root, "the dockerd data-root")->capture_default_str();
  detach->callback([detach_args, exit_code] { *exit_code = run_detach(*detach_args); });
}

}  // namespace extrafs::tools
