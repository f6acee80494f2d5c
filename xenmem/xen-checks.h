/* The xen backend's checks before anything moves (xen-checks.c): the
 * source builds the preflight (preflight.h) and refuses what cannot move;
 * the destination checks the preflight against itself and gives the new
 * domain its own disks (the disk map). */
#ifndef XENMEM_XEN_CHECKS_H
#define XENMEM_XEN_CHECKS_H

#include <stddef.h>
#include <stdint.h>

#include <libxl.h>
#include <xenctrl.h>

#include "engine.h"
#include "preflight.h"

/* Source: fill PF for domain DOMID whose libxl configuration is CFG: this
 * Xen's version, every disk with the destination UUID the map O gives its
 * target, the domain's CPU policy.  Refuses (-1, reported) a disk that is
 * not in the map, a map entry that names no disk of the domain, and
 * devices that cannot move live (PCI, device-tree or USB passthrough,
 * vTPM, 9pfs). */
int xm_xen_preflight_build (xc_interface *xch, libxl_ctx *ctx, uint32_t domid,
                            const libxl_domain_config *cfg,
                            const struct xm_send_opts *o,
                            struct xm_preflight *pf);

/* Destination: may the domain of configuration CFG and preflight PF be
 * restored here?  Its Xen version (xm_xen_version_ok), its disks against
 * the map O (every disk of the guest mapped to a device here, every device
 * used), the free memory libxl says it needs, and its CPU policy against
 * this host's HVM maximum.  0 with CFG's disks rewritten to phy:DEVICE
 * (raw), or -1 with WHY (WHYLEN bytes), CFG unchanged. */
int xm_xen_preflight_check (xc_interface *xch, libxl_ctx *ctx,
                            libxl_domain_config *cfg,
                            const struct xm_preflight *pf,
                            const struct xm_recv_opts *o,
                            char *why, size_t whylen);

#endif
