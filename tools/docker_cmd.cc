// `extrafs docker attach IMAGE... | --all --mount MOUNTPOINT [--data-root DIR] [--restart]` and
// `extrafs docker detach IMAGE... [--data-root DIR] [--restart]` (the work is in docker/attach.cc,
// docker/detach.cc, and docker/dockerd_control.cc for --restart).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstring>
#include <memory>

#include "common/log.h"
#include "common/str_util.h"
#include "docker/attach.h"
#include "docker/data_root.h"
#include "docker/detach.h"
#include "docker/dockerd_control.h"
#include "tools/commands.h"
#include "tools/docker_report.h"

namespace extrafs::tools {

namespace {

using docker::kDefaultDataRoot;

std::string short_id(const std::string& id) { return id.substr(id.find(':') + 1, 12); }

struct DockerArgs {
  std::vector<std::string> images;
  std::string mount;
  std::string data_root = kDefaultDataRoot;
  bool all = false;
  bool restart = false;
};

// Validates the references; 0 or the usage exit code after printing one line.
int check_refs(const std::vector<std::string>& images) {
  for (const auto& i : images) {
    auto r = docker::familiar_ref(i);
    if (!r.ok()) return fail(r.error().message, 2);
  }
  return 0;
}

int run_attach(const DockerArgs& a) {
  if (a.all && !a.images.empty()) return fail("give IMAGE... or --all, not both", 2);
  if (!a.all && a.images.empty()) return fail("give IMAGE... or --all", 2);
  if (int rc = check_refs(a.images)) return rc;
  if (a.data_root.empty()) return fail("--data-root must not be empty", 2);
  docker::AttachRequest req;
  req.mount = a.mount;
  req.data_root = a.data_root;
  req.refs = a.images;
  req.all = a.all;
  req.restart = a.restart;
  docker::AttachReport rep;
  Status st = docker::docker_attach(req, &rep);
  print_recovered(rep.restart);
  if (!st.ok()) {
    fail("cannot attach: " + st.error().message);
    return finish_restart(rep.restart, 1, "extrafs");
  }
  if (rep.nothing_to_attach) {
    std::printf("nothing to attach: every image of %s is attached in %s\n", a.mount.c_str(), a.data_root.c_str());
    return finish_restart(rep.restart, 0, "extrafs");
  }
  for (const auto& r : rep.images) {
    const bool changed = r.layers_created || r.layers_repaired || r.config_written || r.tag_written;
    if (!changed) {
      std::printf("%s (%s) already attached: %d layers present\n", r.ref.c_str(), short_id(r.image_id).c_str(),
                  r.layers);
      continue;
    }
    std::printf("attached %s (%s): %d layers, %d new, %d already present", r.ref.c_str(), short_id(r.image_id).c_str(),
                r.layers, r.layers_created, r.layers_present);
    if (r.layers_repaired) std::printf(", %d repaired", r.layers_repaired);
    if (!r.previous_id.empty()) std::printf("; the tag pointed at %s before", short_id(r.previous_id).c_str());
    std::printf("\n");
  }
  print_restart(rep.restart);
  return finish_restart(rep.restart, 0, "extrafs");
}

int run_detach(const DockerArgs& a) {
  if (int rc = check_refs(a.images)) return rc;
  if (a.data_root.empty()) return fail("--data-root must not be empty", 2);
  docker::DetachRequest req;
  req.data_root = a.data_root;
  req.refs = a.images;
  req.restart = a.restart;
  docker::DetachReport rep;
  Status st = docker::docker_detach(req, &rep);
  print_recovered(rep.restart);
  // What was detached before a failure is reported too.
  for (const auto& r : rep.images) {
    std::printf("detached %s (%s): tag%s and %zu layers removed%s%s\n", r.ref.c_str(), short_id(r.image_id).c_str(),
                r.config_removed ? ", image config" : "", r.removed_layers.size(),
                r.config_removed ? "" : "; image config kept: ", r.config_removed ? "" : r.note.c_str());
    for (const auto& k : r.kept_layers) std::printf("  kept layer %s\n", k.c_str());
  }
  if (!st.ok()) {
    fail("cannot detach: " + st.error().message);
    return finish_restart(rep.restart, 1, "extrafs");
  }
  print_restart(rep.restart);
  return finish_restart(rep.restart, 0, "extrafs");
}

}  // namespace

void add_docker_command(CLI::App& app, int* exit_code) {
  auto* docker = app.add_subcommand("docker", "register images of an extrafs mount with a stock dockerd (overlay2)");
  docker->require_subcommand(1);

  auto attach_args = std::make_shared<DockerArgs>();
  auto* attach = docker->add_subcommand(
      "attach", "register IMAGE(s) served by an extrafs mount in a dockerd data-root (dockerd stopped, or --restart)");
  attach->add_option("IMAGE", attach_args->images, "name:tag as docker shows it");
  attach->add_flag("--all", attach_args->all, "every image of the mount not attached yet");
  attach->add_option("--mount", attach_args->mount, "the extrafs mount serving the images")->required();
  attach->add_option("--data-root", attach_args->data_root, "the dockerd data-root")->capture_default_str();
  attach->add_flag("--restart", attach_args->restart,
                   "restart a running dockerd (live-restore required) around the change");
  attach->callback([attach_args, exit_code] { *exit_code = run_attach(*attach_args); });

  auto detach_args = std::make_shared<DockerArgs>();
  auto* detach = docker->add_subcommand(
      "detach",
      "remove IMAGE(s) attached earlier, and whatever of them nothing else uses (dockerd stopped, or --restart)");
  detach->add_option("IMAGE", detach_args->images, "name:tag as docker shows it")->required();
  detach->add_option("--data-root", detach_args->data_root, "the dockerd data-root")->capture_default_str();
  detach->add_flag("--restart", detach_args->restart,
                   "restart a running dockerd (live-restore required) around the change");
  detach->callback([detach_args, exit_code] { *exit_code = run_detach(*detach_args); });
}

}  // namespace extrafs::tools
