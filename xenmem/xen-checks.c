/* The xen backend's checks before anything moves (xen-checks.h).
 *
 * XenServer's VM.migrate refuses up front what the destination could not
 * run (memory, CPU, Xen version, devices that cannot move) and maps each
 * VDI to one on the destination (vdi_map).  Here the source says what it
 * has in one record (the preflight) and the destination decides, before
 * a page is sent: a refusal costs the guest nothing. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "xen-checks.h"

#include <xenguest.h>           /* after xenctrl.h (xen-checks.h) */

/* Is TARGET (a disk's pdev_path) the map entry's FROM?  The same string,
 * or the same file once symlinks are resolved (/dev/disk/by-... names). */
static bool
same_target (const char *target, const char *from)
{
  char a[PATH_MAX], b[PATH_MAX];

  if (!target)
    return false;
  if (strcmp (target, from) == 0)
    return true;
  return realpath (target, a) && realpath (from, b) && strcmp (a, b) == 0;
}

/* Devices whose state lives outside the guest's memory and this host's
 * disks: a guest that has one cannot move live. */
static int
refuse_unmovable (uint32_t domid, const libxl_domain_config *cfg)
{
  if (cfg->num_pcidevs > 0) {
    const libxl_device_pci *p = &cfg->pcidevs[0];
    sxm_error ("xen: domain %u has PCI device %04x:%02x:%02x.%x passed "
               "through: its state is in the device, it cannot move live "
               "(detach it first: xl pci-detach)", domid, p->domain, p->bus,
               p->dev, p->func);
    return -1;
  }
  if (cfg->num_dtdevs > 0) {
    sxm_error ("xen: domain %u has device-tree device %s passed through: it "
               "cannot move live", domid,
               cfg->dtdevs[0].path ? cfg->dtdevs[0].path : "?");
    return -1;
  }
  if (cfg->num_usbdevs > 0) {
    sxm_error ("xen: domain %u has a USB device passed through: it cannot "
               "move live (xl usbdev-detach)", domid);
    return -1;
  }
  if (cfg->num_vtpms > 0) {
    sxm_error ("xen: domain %u has a vTPM: its state is in the vTPM "
               "domain, which does not move with it", domid);
    return -1;
  }
  if (cfg->num_p9s > 0) {
    sxm_error ("xen: domain %u shares %s over 9pfs (tag %s): the share is a "
               "path on this host, it cannot move", domid,
               cfg->p9s[0].path ? cfg->p9s[0].path : "?",
               cfg->p9s[0].tag ? cfg->p9s[0].tag : "?");
    return -1;
  }
  return 0;
}

int
xm_xen_preflight_build (xc_interface *xch, libxl_ctx *ctx, uint32_t domid,
                        const libxl_domain_config *cfg,
                        const struct xm_send_opts *o, struct xm_preflight *pf)
{
  const libxl_version_info *v = libxl_get_version_info (ctx);
  bool used[XM_DISK_MAP_MAX] = { false };
  xc_cpu_policy_t *pol = NULL;
  xen_cpuid_leaf_t *leaves = NULL;
  xen_msr_entry_t *msrs = NULL;
  uint32_t nl = 0, nm = 0;
  int ret = -1;

  memset (pf, 0, sizeof *pf);
  if (refuse_unmovable (domid, cfg) == -1)
    return -1;
  if (!v) {
    sxm_error ("xen: libxl cannot say which Xen this is");
    return -1;
  }
  pf->xen_major = v->xen_version_major;
  pf->xen_minor = v->xen_version_minor;

  /* The disk map: every disk of the domain, each map entry once. */
  if (cfg->num_disks > XM_PF_DISKS_MAX) {
    sxm_error ("xen: domain %u has %d disks; xenmem moves at most %d",
               domid, cfg->num_disks, XM_PF_DISKS_MAX);
    return -1;
  }
  for (int i = 0; i < cfg->num_disks; i++) {
    const libxl_device_disk *dk = &cfg->disks[i];
    const char *vdev = dk->vdev ? dk->vdev : "";
    unsigned m;
    size_t n = strlen (vdev);
    if (n == 0 || n > XM_PF_VDEV_MAX || strspn (vdev, "abcdefghijklmnopqrstuvwxyz0123456789") != n) {
      sxm_error ("xen: domain %u's disk %d has the device name '%s', which "
                 "xenmem cannot carry (1 to %d of a-z, 0-9)", domid, i, vdev,
                 XM_PF_VDEV_MAX);
      return -1;
    }
    for (m = 0; m < o->ndisk_map; m++)
      if (!used[m] && same_target (dk->pdev_path, o->disk_map[m].from))
        break;
    if (m == o->ndisk_map) {
      sxm_error ("xen: domain %u's disk %s (%s) is not in the disk map: "
                 "each disk the domain has must go to a destination disk "
                 "(--disk-map=%s=UUID; sxm migrate --disk: its control "
                 "socket)", domid, vdev,
                 dk->pdev_path ? dk->pdev_path : "no target",
                 dk->pdev_path ? dk->pdev_path : "TARGET");
      return -1;
    }
    used[m] = true;
    memcpy (pf->disks[i].vdev, vdev, n + 1);
    xm_uuid_parse (o->disk_map[m].to, pf->disks[i].uuid);  /* checked (cli) */
  }
  pf->ndisks = cfg->num_disks;
  for (unsigned m = 0; m < o->ndisk_map; m++)
    if (!used[m]) {
      sxm_error ("xen: --disk-map %s=%s: domain %u has no disk with that "
                 "target (or a second entry for it)", o->disk_map[m].from,
                 o->disk_map[m].to, domid);
      return -1;
    }

  /* The CPU policy the guest was started with: the destination must be
   * able to give it the same (a guest that saw a feature may use it). */
  if (!(pol = xc_cpu_policy_init ()) ||
      xc_cpu_policy_get_domain (xch, domid, pol) != 0 ||
      xc_cpu_policy_get_size (xch, &nl, &nm) != 0) {
    sxm_error ("xen: cannot read domain %u's CPU policy: %m", domid);
    goto out;
  }
  leaves = calloc (nl ? nl : 1, sizeof *leaves);
  msrs = calloc (nm ? nm : 1, sizeof *msrs);
  if (!leaves || !msrs ||
      xc_cpu_policy_serialise (xch, pol, leaves, &nl, msrs, &nm) != 0) {
    sxm_error ("xen: cannot serialise domain %u's CPU policy: %m", domid);
    goto out;
  }
  if (nl > XM_PF_LEAVES_MAX || nm > XM_PF_MSRS_MAX) {
    sxm_error ("xen: domain %u's CPU policy has %" PRIu32 " CPUID leaves and %"
               PRIu32 " MSRs; the preflight carries at most %d and %d",
               domid, nl, nm, XM_PF_LEAVES_MAX, XM_PF_MSRS_MAX);
    goto out;
  }
  for (uint32_t i = 0; i < nl; i++)
    pf->leaves[i] = (struct xm_pf_leaf) { leaves[i].leaf, leaves[i].subleaf,
                                          leaves[i].a, leaves[i].b,
                                          leaves[i].c, leaves[i].d };
  for (uint32_t i = 0; i < nm; i++)
    pf->msrs[i] = (struct xm_pf_msr) { msrs[i].idx, msrs[i].flags,
                                       msrs[i].val };
  pf->nleaves = nl;
  pf->nmsrs = nm;
  ret = 0;
 out:
  xc_cpu_policy_destroy (pol);
  free (leaves);
  free (msrs);
  return ret;
}

/* The disk map, checked both ways; on success NEWPATH[i] is the device
 * for CFG's disk i. */
static int
map_disks (const libxl_domain_config *cfg, const struct xm_preflight *pf,
           const struct xm_recv_opts *o, const char **newpath,
           char *why, size_t whylen)
{
  bool used[XM_DISK_MAP_MAX] = { false };
  char u[37];

  for (int i = 0; i < cfg->num_disks; i++) {
    const char *vdev = cfg->disks[i].vdev ? cfg->disks[i].vdev : "?";
    uint32_t k;
    unsigned m;
    for (k = 0; k < pf->ndisks; k++)
      if (strcmp (pf->disks[k].vdev, vdev) == 0)
        break;
    if (k == pf->ndisks) {
      snprintf (why, whylen, "the guest's disk %s is not in the sender's "
                "disk map", vdev);
      return -1;
    }
    xm_uuid_format (pf->disks[k].uuid, u);
    for (m = 0; m < o->ndisk_map; m++)
      if (strcasecmp (o->disk_map[m].from, u) == 0)
        break;
    if (m == o->ndisk_map) {
      snprintf (why, whylen, "the guest's disk %s goes to destination disk "
                "%s, which this receiver was not given (--disk-map=%s=DEVICE)",
                vdev, u, u);
      return -1;
    }
    used[m] = true;
    newpath[i] = o->disk_map[m].to;
  }
  if (pf->ndisks != (uint32_t) cfg->num_disks) {
    snprintf (why, whylen, "the sender's disk map has %" PRIu32 " disks, the "
              "guest's configuration %d", pf->ndisks, cfg->num_disks);
    return -1;
  }
  for (unsigned m = 0; m < o->ndisk_map; m++)
    if (!used[m]) {
      snprintf (why, whylen, "destination disk %s (%s) is not one of the "
                "guest's disks", o->disk_map[m].from, o->disk_map[m].to);
      return -1;
    }
  return 0;
}

/* The guest's CPU policy within this host's HVM maximum (PVH guests are
 * HVM containers)?  Xen's own comparison (xc_cpu_policy_is_compatible). */
static int
check_cpu (xc_interface *xch, const struct xm_preflight *pf, char *why,
           size_t whylen)
{
  xc_cpu_policy_t *host = xc_cpu_policy_init (), *guest = xc_cpu_policy_init ();
  xen_cpuid_leaf_t *l = calloc (pf->nleaves + 1, sizeof *l);
  xen_msr_entry_t *m = calloc (pf->nmsrs + 1, sizeof *m);
  int ret = -1;

  if (!host || !guest || !l || !m) {
    snprintf (why, whylen, "out of memory");
    goto out;
  }
  for (uint32_t i = 0; i < pf->nleaves; i++)
    l[i] = (xen_cpuid_leaf_t) { .leaf = pf->leaves[i].leaf,
                                .subleaf = pf->leaves[i].subleaf,
                                .a = pf->leaves[i].a, .b = pf->leaves[i].b,
                                .c = pf->leaves[i].c, .d = pf->leaves[i].d };
  for (uint32_t i = 0; i < pf->nmsrs; i++)
    m[i] = (xen_msr_entry_t) { .idx = pf->msrs[i].idx,
                               .val = pf->msrs[i].val };
  if (xc_cpu_policy_get_system (xch, XEN_SYSCTL_cpu_policy_hvm_max, host)) {
    snprintf (why, whylen, "cannot read this host's CPU policy: %s",
              strerror (errno));
    goto out;
  }
  if ((pf->nleaves && xc_cpu_policy_update_cpuid (xch, guest, l, pf->nleaves)) ||
      (pf->nmsrs && xc_cpu_policy_update_msrs (xch, guest, m, pf->nmsrs))) {
    snprintf (why, whylen, "the guest's CPU policy (%" PRIu32 " CPUID leaves, "
              "%" PRIu32 " MSRs) is not one this Xen understands", pf->nleaves,
              pf->nmsrs);
    goto out;
  }
  if (!xc_cpu_policy_is_compatible (xch, host, guest)) {
    snprintf (why, whylen, "this host's CPU cannot run the guest: the CPU "
              "policy it was started with (features it may be using) is not "
              "within this host's HVM maximum");
    goto out;
  }
  ret = 0;
 out:
  xc_cpu_policy_destroy (host);
  xc_cpu_policy_destroy (guest);
  free (l);
  free (m);
  return ret;
}

int
xm_xen_preflight_check (xc_interface *xch, libxl_ctx *ctx,
                        libxl_domain_config *cfg,
                        const struct xm_preflight *pf,
                        const struct xm_recv_opts *o, char *why,
                        size_t whylen)
{
  const libxl_version_info *v = libxl_get_version_info (ctx);
  const char *newpath[XM_PF_DISKS_MAX];
  libxl_domain_config copy;
  uint64_t need = 0, avail = 0;
  int rc;

  if (!v) {
    snprintf (why, whylen, "libxl cannot say which Xen this is");
    return -1;
  }
  if (xm_xen_version_ok (pf->xen_major, pf->xen_minor, v->xen_version_major,
                         v->xen_version_minor, why, whylen) == -1)
    return -1;
  if (cfg->num_disks > XM_PF_DISKS_MAX) {
    snprintf (why, whylen, "the guest has %d disks, at most %d can move",
              cfg->num_disks, XM_PF_DISKS_MAX);
    return -1;
  }
  if (map_disks (cfg, pf, o, newpath, why, whylen) == -1)
    return -1;

  /* Memory: what libxl would need to build the domain (its defaults
   * applied to a copy: the restore applies them itself). */
  libxl_domain_config_init (&copy);
  libxl_domain_config_copy (ctx, &copy, cfg);
  rc = libxl_domain_need_memory (ctx, &copy, DOMID_INVALID, &need);
  libxl_domain_config_dispose (&copy);
  if (rc != 0 || libxl_get_free_memory (ctx, &avail) != 0) {
    snprintf (why, whylen, "libxl cannot say how much memory the guest "
              "needs or this host has free");
    return -1;
  }
  if (avail < need) {
    snprintf (why, whylen, "not enough memory here: the guest needs %" PRIu64
              " MiB, this host has %" PRIu64 " MiB free", need / 1024,
              avail / 1024);
    return -1;
  }
  if (check_cpu (xch, pf, why, whylen) == -1)
    return -1;

  /* Everything holds: the new domain gets this host's disks. */
  for (int i = 0; i < cfg->num_disks; i++) {
    libxl_device_disk *dk = &cfg->disks[i];
    char *p = strdup (newpath[i]);
    if (!p) {
      snprintf (why, whylen, "out of memory");
      return -1;
    }
    free (dk->pdev_path);
    dk->pdev_path = p;
    dk->backend = LIBXL_DISK_BACKEND_PHY;
    dk->format = LIBXL_DISK_FORMAT_RAW;
    free (dk->script);          /* the source's hotplug script, if any */
    dk->script = NULL;
    if (o->disk_script && !(dk->script = strdup (o->disk_script))) {
      snprintf (why, whylen, "out of memory");
      return -1;
    }
  }
  return 0;
}
