/* xenmem's kvm backend: NOT IMPLEMENTED in this version.
 *
 * The design (doc/design.md "xenmem"): a long-mode test guest built by
 * xenmem, dirty tracking with KVM_GET_DIRTY_LOG, vCPU state moved with
 * KVM_GET/SET_REGS, SREGS and FPU.  The development machines expose no
 * /dev/kvm (the kvm module is loaded but registers no device), so nothing
 * written for it could be run; rather than ship untested code, the backend
 * refuses loudly and points at the uffd backend, which runs a real guest
 * workload under the kernel's own dirty tracking. */
#include <unistd.h>

#include "backend.h"
#include "log.h"

static const char *
why (void)
{
  return access ("/dev/kvm", R_OK | W_OK) == 0
    ? "the kvm backend is not implemented in this version (see "
      "doc/xenmem.pod); use --backend=uffd"
    : "the kvm backend is not implemented in this version, and this "
      "machine has no usable /dev/kvm; use --backend=uffd";
}

static int
kvm_open_source (const char *id, const struct xm_guest_opts *g,
                 struct xm_source **out)
{
  sxm_error ("%s", why ());
  return -1;
}

static int
kvm_create_dest (const char *id, uint64_t npages, struct xm_dest **out)
{
  sxm_error ("%s", why ());
  return -1;
}

const struct xm_backend_ops xm_backend_kvm = {
  .name = "kvm",
  .id = XM_BACKEND_KVM,
  .open_source = kvm_open_source,
  .create_dest = kvm_create_dest,
};
