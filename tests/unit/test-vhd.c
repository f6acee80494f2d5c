/* Format helpers: checksum, UTF-16 decoding, the virtual size rule. */
#include <string.h>

#include "endian.h"
#include "log.h"
#include "pctdecode.h"
#include "vhd.h"
#include "tap.h"

static struct vhd_footer
mkfooter (const char *creator, uint16_t c, uint8_t h, uint8_t s,
          uint64_t current)
{
  struct vhd_footer f;
  memset (&f, 0, sizeof f);
  memcpy (f.creator_app, creator, 4);
  f.cylinders = c;
  f.heads = h;
  f.sectors_per_track = s;
  f.current_size = current;
  return f;
}

static char last_error[1024];

static void
capture (enum sxm_log_level level, const char *msg)
{
  if (level == SXM_LOG_ERROR)
    snprintf (last_error, sizeof last_error, "%s", msg);
}

int
main (void)
{
  uint8_t b[512] = { 0 };
  char out[64];
  struct vhd_footer f;
  const uint8_t le[] = { 'a', 0, 0x3d, 0xd8, 0x00, 0xde, 0xe9, 0, 0, 0 };
  const uint8_t bad_surrogate[] = { 0x00, 0xdc, 'x', 0 };
  const uint8_t be[] = { 0, 'p', 0, '.', 0, 'v', 0, 0 };

  b[0] = 1; b[64] = 0xff; b[100] = 2;
  ok (vhd_checksum (b, 512, 64) == (uint32_t) ~3u,
      "checksum skips its own field");

  ok (vhd_utf16_to_utf8 (le, sizeof le, false, out, sizeof out) == 7 &&
      strcmp (out, "a\xf0\x9f\x98\x80\xc3\xa9") == 0,
      "UTF-16LE with a surrogate pair decodes to UTF-8");
  ok (vhd_utf16_to_utf8 (be, sizeof be, true, out, sizeof out) == 3 &&
      strcmp (out, "p.v") == 0, "UTF-16BE decodes, stops at NUL");
  ok (vhd_utf16_to_utf8 (bad_surrogate, sizeof bad_surrogate, false, out,
                         sizeof out) == -1, "lone low surrogate refused");
  ok (vhd_utf16_to_utf8 (le, sizeof le, false, out, 4) == -1,
      "output overflow refused, not truncated silently");

  {
    const char *text = "dir\\p\xc3\xa9\xf0\x9f\x98\x80.vhd";
    uint8_t u16[64];
    char back[64];
    ssize_t n = vhd_utf8_to_utf16 (text, false, u16, sizeof u16);
    ok (n == 2 * 12 && vhd_utf16_to_utf8 (u16, n, false, back, sizeof back) > 0
        && strcmp (back, text) == 0, "UTF-8 -> UTF-16LE -> UTF-8 round trip");
    ok (vhd_utf8_to_utf16 ("\xc3(", true, u16, sizeof u16) == -1,
        "malformed UTF-8 refused");
    ok (vhd_utf8_to_utf16 ("abc", true, u16, 4) == -1,
        "UTF-16 output overflow refused");
  }

  /* qemu's rule (size_from=qemu), creator by creator. */
  f = mkfooter ("vpc ", 301, 4, 17, 10 * 1048576 + 1536);
  ok (vhd_virtual_size (&f, VHD_SIZE_QEMU) == 301ULL * 4 * 17 * 512,
      "qemu rule: 'vpc ' uses CHS");
  f = mkfooter ("win ", 301, 4, 17, 10 * 1048576 + 1536);
  ok (vhd_virtual_size (&f, VHD_SIZE_QEMU) == 10 * 1048576 + 1536,
      "qemu rule: 'win ' uses current_size");
  f = mkfooter ("tap\0", 301, 4, 17, 10 * 1048576 + 1537);
  ok (vhd_virtual_size (&f, VHD_SIZE_QEMU) == 10 * 1048576 + 1536,
      "qemu rule: 'tap\\0' uses current_size, rounded down to a sector");
  f = mkfooter ("tapx", 301, 4, 17, 10 * 1048576 + 1536);
  ok (vhd_virtual_size (&f, VHD_SIZE_QEMU) == 301ULL * 4 * 17 * 512,
      "qemu rule: 'tapx' is not blktap: CHS");
  f = mkfooter ("vpc ", 65535, 16, 255, 200ULL << 30);
  ok (vhd_virtual_size (&f, VHD_SIZE_QEMU) == 200ULL << 30,
      "qemu rule: maximum geometry means current_size");
  /* The default, current, for every creator; chs forces the geometry. */
  f = mkfooter ("xyz1", 301, 4, 17, 10 * 1048576 + 1537);
  ok (vhd_virtual_size (&f, VHD_SIZE_CURRENT) == 10 * 1048576 + 1536,
      "current rule: an unknown creator gets current_size (whole sectors)");
  f = mkfooter ("vpc ", 301, 4, 17, 10 * 1048576 + 1536);
  ok (vhd_virtual_size (&f, VHD_SIZE_CURRENT) == 10 * 1048576 + 1536,
      "current rule: 'vpc ' too");
  f = mkfooter ("win ", 301, 4, 17, 10 * 1048576 + 1536);
  ok (vhd_virtual_size (&f, VHD_SIZE_CHS) == 301ULL * 4 * 17 * 512,
      "size_from=chs overrides the creator");
  f = mkfooter ("vpc ", 65535, 16, 255, 200ULL << 30);
  ok (vhd_virtual_size (&f, VHD_SIZE_CHS) == 200ULL << 30,
      "chs rule: maximum geometry still means current_size");
  {
    enum vhd_size_rule r;
    ok (vhd_size_rule_parse ("auto", &r) == 0 && r == VHD_SIZE_QEMU
        && vhd_size_rule_parse ("current", &r) == 0 && r == VHD_SIZE_CURRENT
        && vhd_size_rule_parse ("chs", &r) == 0 && r == VHD_SIZE_CHS
        && vhd_size_rule_parse ("CHS", &r) == -1
        && strcmp (vhd_size_rule_name (VHD_SIZE_QEMU), "qemu") == 0,
        "size rule names: current, chs, qemu (auto = qemu)");
  }

  memset (b, 0, sizeof b);
  memcpy (b, "conectix", 8);
  be32_store (b + 12, 0x00010000);
  be32_store (b + 60, 3);
  be32_store (b + 64, vhd_checksum (b, 512, 64));
  ok (vhd_footer_parse (b, &f, "t", 0) == 0 && f.type == 3,
      "a minimal valid footer parses");
  b[70] ^= 1;
  sxm_log_set_sink (capture);
  ok (vhd_footer_parse (b, &f, "img.vhd", 4096) == -1,
      "one flipped bit is caught");
  ok (strstr (last_error, "img.vhd: footer checksum mismatch") &&
      strstr (last_error, "field 'checksum' at offset 4160"),
      "the error names file, field and absolute offset: %s", last_error);

  /* Percent-decoding (MacX locators, NBD URI queries): exactly two hex
   * digits.  "%ag" once took one digit and skipped two, walking past the
   * end of the string (found by fuzz-vhd-open). */
  ok (pct_decode ("%2F") == 0x2f && pct_decode ("%2f") == 0x2f &&
      pct_decode ("%00") == 0, "%%XY decodes, either case");
  ok (pct_decode ("%ag") == -1 && pct_decode ("%A") == -1 &&
      pct_decode ("%") == -1 && pct_decode ("% 1") == -1 &&
      pct_decode ("%+f") == -1 && pct_decode ("%-1") == -1 &&
      pct_decode ("x2F") == -1,
      "one digit, a sign, a space, the end of the string: not an escape");
  return tap_done ();
}
