/*
 * Helpers of the blocked direct convolution that are not the BRGEMM itself.
 *
 * dlcpu_conv_pack_tile copies the input rows one work item needs into a per-thread tile that
 * is zero-padded (so no tap ever needs a bounds check) and, for a stride sw > 1, split into sw
 * column phases (so the pixels one BRGEMM call walks are always 16 floats apart, which is the
 * only pixel stride the microkernels are built for).  Tile layout:
 *     T[cb][tr][phase][pos][16],  padded column  pos*sw + phase  <->  input column  -pad_w + that.
 * The copy is paid once per work item and reused by every output-channel block, so it is a few
 * per mille of the FMAs of a ResNet-50 layer; a padded copy of the whole tensor instead would
 * cost 5-15% (it streams the full input through memory once more per call).
 *
 * The copies move whole 16-channel pixels and never look at the values, so they are written once
 * for any element type: px is the bytes of one pixel (64 for fp32, 32 for bf16 and int16, 16 for
 * 8-bit), and fill is the byte that pads (0; 128 for u8 activations stored with zero point 128,
 * where the byte 128 is the value 0).
 */
#ifndef DLCPU_CONV_F32_H
#define DLCPU_CONV_F32_H
#include <stdint.h>
#include "convert.h"
#include <string.h>
#include "tiles.h"

static inline void
dlcpu_conv_pack_tile(const char *x_img, char *tile, int64_t Cb, int64_t H, int64_t W,
                     int64_t ih0, int64_t TR, int64_t sw, int64_t PW, int64_t pad_w, int64_t px, int fill)
{
    for (int64_t cb = 0; cb < Cb; cb++) {
        for (int64_t tr = 0; tr < TR; tr++) {
            const int64_t ih = ih0 + tr;
            char *dst_row = tile + (cb * TR + tr) * sw * PW * px;
            if (ih < 0 || ih >= H) {
                memset(dst_row, fill, px * sw * PW);
                continue;
            }
            const char *src_row = x_img + (cb * H + ih) * W * px;
            if (sw == 1) {
                /* Zeros, one contiguous copy, zeros.  pad_w may be negative (the backward pass
                 * crops): padded column pos holds input column pos - pad_w. */
                int64_t lo = pad_w < 0 ? 0 : pad_w, hi = pad_w + W;
                if (lo > PW) lo = PW;
                if (hi > PW) hi = PW;
                if (hi < lo) hi = lo;
                memset(dst_row, fill, px * lo);
                if (hi > lo) memcpy(dst_row + px * lo, src_row + px * (lo - pad_w), px * (hi - lo));
                if (PW > hi) memset(dst_row + px * hi, fill, px * (PW - hi));
                continue;
            }
            for (int64_t ph = 0; ph < sw; ph++) {
                char *dst = dst_row + ph * PW * px;
                for (int64_t pos = 0; pos < PW; pos++) {
                    const int64_t iw = pos * sw + ph - pad_w;
                    if (iw < 0 || iw >= W) memset(dst + pos * px, fill, px);
                    else memcpy(dst + pos * px, src_row + iw * px, px);
                }
            }
        }
    }
}

/* dst[k][c] = src[c][k] for one 16x16 weight block (bwd-data weights swap C and K). */
static inline void dlcpu_transpose_16x16_f32(const float *src, float *dst)
{
    for (int k = 0; k < 16; k++)
        for (int c = 0; c < 16; c++) dst[k * 16 + c] = src[c * 16 + k];
}

/* The same block transposed, then rounded to bf16 in VNNI pairs (dlcpu_f32_to_bf16_vnni's bits):
 * the bwd-data weights of a mixed-precision step, in one pass. */
static inline void dlcpu_transpose_16x16_f32_to_bf16_vnni(int isa, int native, const float *src, uint16_t *dst)
{
    float t[256];
    dlcpu_transpose_16x16_f32(src, t);
    dlcpu_f32_to_bf16_vnni(isa, native, t, dst, 1);
}

/*
 * Strided 1x1 convolutions read one input pixel in sh*sw: their tile is the subsampled input,
 *     T[cb][i][j][16] = x[cb][ih0 + i*sh][iw0 + j*sw][16]   (zero outside the image),
 * dense, so the kernels run on it as on an unstrided 1x1 (pixel runs across rows) and the copy
 * moves only the pixels that are used (the padded phase-split tile would move sh*sw times more).
 */
static inline void
dlcpu_conv_pack_subsampled(const char *x_img, char *tile, int64_t Cb, int64_t H, int64_t W,
                           int64_t ih0, int64_t rows, int64_t sh, int64_t iw0, int64_t cols,
                           int64_t sw, int64_t px, int fill)
{
    for (int64_t cb = 0; cb < Cb; cb++) {
        for (int64_t i = 0; i < rows; i++) {
            const int64_t ih = ih0 + i * sh;
            char *dst = tile + (cb * rows + i) * cols * px;
            if (ih < 0 || ih >= H) {
                memset(dst, fill, px * cols);
                continue;
            }
            const char *src_row = x_img + (cb * H + ih) * W * px;
            for (int64_t j = 0; j < cols; j++) {
                const int64_t iw = iw0 + j * sw;
                if (iw < 0 || iw >= W) memset(dst + j * px, fill, px);
                else memcpy(dst + j * px, src_row + iw * px, px);
            }
        }
    }
}

/* Where one work item's B blocks start (tile mode DLCPU_TILE_*, tiles.h): the image in place, or a
 * freshly packed tile of the TR input rows from output row p0 on.  Shared by the forward and the
 * weight-update drivers; px: bytes per pixel, fill: the padding byte. */
static inline const void *
dlcpu_conv_item_input_px(int mode, const void *x_img, void *tile, int64_t Cb, int64_t H, int64_t W,
                         int64_t p0, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t TR, int64_t PW,
                         int64_t px, int fill)
{
    if (mode == DLCPU_TILE_PADDED) {
        dlcpu_conv_pack_tile((const char *)x_img, (char *)tile, Cb, H, W, p0 * sh - ph, TR, sw, PW, pw, px, fill);
        return tile;
    }
    if (mode == DLCPU_TILE_SUBSAMPLED) {
        dlcpu_conv_pack_subsampled((const char *)x_img, (char *)tile, Cb, H, W, p0 * sh - ph, TR, sh, -pw, PW, sw, px, fill);
        return tile;
    }
    return (const char *)x_img + p0 * W * px;
}

static inline const float *
dlcpu_conv_item_input(int mode, const float *x_img, float *tile, int64_t Cb, int64_t H, int64_t W,
                      int64_t p0, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t TR, int64_t PW)
{
    return (const float *)dlcpu_conv_item_input_px(mode, x_img, tile, Cb, H, W, p0, sh, sw, ph, pw, TR, PW,
                                                   16 * sizeof(float), 0);
}

#endif
