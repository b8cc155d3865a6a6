"""Which languages each script is written in, and Simplified versus Traditional Han.

Tables used by [`detect`][fmai_multilingual.detect]: a script that one major language owns
decides the language alone; in a shared script the identification model's best candidate
*written in that script* wins, so a short Cyrillic message is never called German.
"""

from __future__ import annotations

__all__ = ["default_for", "han_variant", "normalise", "owner", "part_of", "written_in"]

# Scripts that (for identification purposes) belong to one language.
_OWNERS: dict[str, str] = {
    "Hang": "ko", "Kore": "ko", "Jpan": "ja", "Hira": "ja", "Kana": "ja", "Hans": "zh",
    "Hant": "zh", "Hani": "zh", "Bopo": "zh", "Thai": "th", "Grek": "el", "Geor": "ka",
    "Armn": "hy", "Taml": "ta", "Telu": "te", "Knda": "kn", "Mlym": "ml", "Gujr": "gu",
    "Guru": "pa", "Orya": "or", "Sinh": "si", "Khmr": "km", "Laoo": "lo", "Mymr": "my",
    "Ethi": "am", "Tibt": "bo", "Thaa": "dv", "Yiii": "ii", "Java": "jv", "Syrc": "ar",
    "Mong": "mn", "Cans": "iu",
}  # fmt: skip

# Languages written in shared non-Latin scripts (ISO 639-1).
_SHARED: dict[str, frozenset[str]] = {
    "Cyrl": frozenset("ru uk bg sr mk be kk ky tg mn ba tt cv ce os ab av kv".split()),
    "Arab": frozenset("ar fa ur ps ku sd ug ks".split()),
    "Deva": frozenset("hi mr ne sa".split()),
    "Hebr": frozenset("he yi".split()),
    "Beng": frozenset("bn as".split()),
}
# Languages also commonly written in Latin letters although listed above.
_ALSO_LATIN = frozenset("sr kk ku tg uz az tk".split())
_NON_LATIN = frozenset().union(*_SHARED.values(), _OWNERS.values()) - _ALSO_LATIN
_DEFAULT = {"Latn": "en", "Cyrl": "ru", "Arab": "ar", "Deva": "hi", "Hebr": "he", "Beng": "bn"}

# fastText labels that are not ISO 639-1, mapped to the ISO 639-1 code of the macrolanguage
# or closest standard language; others (3-letter codes with no such code) are skipped.
_NORMALISE: dict[str, str] = {
    "sh": "hr", "arz": "ar", "azb": "az", "ckb": "ku", "pnb": "pa", "yue": "zh", "wuu": "zh",
    "mzn": "fa", "glk": "fa", "als": "de", "iw": "he", "in": "id", "ji": "yi", "jw": "jv",
}  # fmt: skip


def normalise(label: str) -> str:
    """Map a model label to ISO 639-1 where one exists (`"arz"` -> `"ar"`)."""
    return _NORMALISE.get(label, label)


def owner(script: str) -> str | None:
    """The language that owns `script` for identification, or `None` for shared scripts."""
    return _OWNERS.get(script)


def part_of(char_script: str, text_script: str) -> bool:
    """Whether characters of `char_script` belong to the text script `text_script`."""
    if text_script == "Jpan":
        return char_script in ("Hani", "Hira", "Kana")
    if text_script == "Kore":
        return char_script in ("Hang", "Hani")
    if text_script in ("Hans", "Hant"):
        return char_script == "Hani"
    return char_script == text_script


def written_in(language: str, script: str) -> bool:
    """Whether `language` (ISO 639-1) is commonly written in `script`."""
    if len(language) != 2:
        return False
    if script == "Latn":
        return language not in _NON_LATIN
    if script in _SHARED:
        return language in _SHARED[script]
    return _OWNERS.get(script) == language


def default_for(script: str) -> str:
    """The most spoken language of a shared script (used when the model offers none)."""
    return _DEFAULT.get(script, "und")


# Characters that differ between Simplified and Traditional Chinese: (simplified, traditional).
_PAIRS = """这這 们們 个個 来來 时時 为為 说說 国國 会會 对對 过過 还還 没沒 发發 长長 开開
问問 门門 见見 语語 书書 车車 马馬 鸟鳥 鱼魚 东東 张張 动動 电電 话話 让讓 认認 识識 学學
习習 经經 济濟 关關 实實 现現 进進 运運 应應 该該 报報 纸紙 网網 络絡 机機 场場 饭飯 馆館
钱錢 银銀 爱愛 听聽 写寫 读讀 买買 卖賣 医醫 药藥 线線 带帶 头頭 钟鐘 点點 变變 传傳 边邊
气氣 从從 吗嗎 妈媽 谁誰 请請 谢謝 欢歡 乐樂 号號 间間 题題 饿餓 热熱 脑腦 钥鑰 员員 区區
岁歲 两兩 样樣 师師 帮幫 给給 几幾 万萬 与與 业業 亚亞 产產 亲親 众眾 优優 体體 价價 华華
单單 卫衛 厅廳 历歷 压壓 县縣 双雙 叶葉 启啟 园園 围圍 图圖 块塊 坏壞 处處 备備 复復 宝寶
宽寬 导導 岛島 广廣 庆慶 库庫 归歸 当當 录錄 忆憶 怀懷 态態 总總 惊驚 战戰 护護 换換 数數
断斷 无無 旧舊 显顯 术術 杂雜 权權 条條 极極 标標 桥橋 检檢 楼樓 毕畢 汉漢 汤湯 满滿 灯燈
烧燒 爷爺 独獨 猫貓 环環 画畫 疗療 盖蓋 确確 离離 种種 积積 称稱 笔筆 简簡 类類 红紅 约約
级級 纪紀 练練 组組 细細 终終 结結 统統 续續 继繼 绿綠 编編 罗羅 职職 联聯 胜勝 脸臉 节節
艺藝 获獲 虽雖 装裝 观觀 规規 视視 觉覺 计計 订訂 议議 记記 讲講 许許 论論 设設 访訪 证證
试試 课課 调調 谈談 负負 财財 责責 败敗 货貨 质質 购購 贵貴 费費 资資 赛賽 轻輕 输輸 达達
远遠 连連 选選 适適 邮郵 铁鐵 错錯 闭閉 闹鬧 队隊 阳陽 阴陰 际際 陆陸 难難 静靜 页頁 顶頂
项項 顺順 须須 顾顧 预預 领領 颜顏 风風 飞飛 饮飲 饱飽 验驗 鸡雞 麦麥 黄黃 齐齊 龙龍 亿億
办辦 务務 劳勞 剧劇 声聲 够夠 奖獎 宁寧 审審 响響 圆圓 坚堅 墙牆 梦夢 剩剩 码碼 软軟 件件
户戶 线線 换換 碍礙 搬搬 乱亂 脚腳 惯慣 舰艦 辆輛 钢鋼 铺鋪 锁鎖 键鍵 镜鏡 阅閱 随隨 隐隱
韩韓 饺餃 馒饅 鲜鮮 鸭鴨 黑黑 汇匯 沟溝 测測 浅淺 湿濕 滚滾 灭滅 炉爐 烟煙 爸爸 牵牽 疯瘋"""
_SIMPLIFIED = frozenset(p[0] for p in _PAIRS.split() if p[0] != p[1])
_TRADITIONAL = frozenset(p[1] for p in _PAIRS.split() if p[0] != p[1])


def han_variant(text: str) -> str:
    """`"Hans"` or `"Hant"` by characters only one of them uses; `"Hani"` when undecided."""
    simplified = sum(c in _SIMPLIFIED for c in text)
    traditional = sum(c in _TRADITIONAL for c in text)
    if simplified > traditional:
        return "Hans"
    if traditional > simplified:
        return "Hant"
    return "Hani"
