"""The School_math stand-in's problem families (read by make_standins.py; the data README says what they are).

Each family draws one problem from a seeded ``random.Random`` and returns (question, steps, answer): the question in
one of two or three phrasings, often with a sentence whose number does not enter the solution (a distractor), and a
solution of three to five steps, one per line, that make_standins.py closes with the line ``答：{answer}``. The answer
line holds only the final numbers, so answer accuracy (adaq_lora/scoring/accuracy.py) cannot be earned by copying a
number from the question. Numbers stay small enough that a 135M-parameter model can learn the arithmetic.
"""

NAMES = ["小明", "小红", "小华", "小刚", "小丽", "小芳", "小军", "小强",
         "小燕", "小亮", "小林", "小雪", "小东", "小兰", "小杰", "小文"]
STATIONERY = [("铅笔", "支"), ("笔记本", "本"), ("橡皮", "块"), ("尺子", "把"),
              ("气球", "个"), ("贴纸", "张"), ("彩笔", "盒"), ("信封", "个")]
VEHICLES = ["汽车", "货车", "客车", "摩托车"]
FIELDS = ["花坛", "菜地", "果园", "操场", "鱼塘"]
SUBJECTS = ["数学", "语文", "英语", "科学"]
CLOTHES = ["外套", "衬衫", "裤子", "毛衣", "裙子"]
FRUITS = ["苹果", "梨", "橘子", "桃子"]
GOALS = [("书包", 60, 150), ("足球", 80, 200), ("台灯", 70, 180), ("字典", 50, 120)]


def maybe(rng, sentence):
    """A distractor sentence half of the time, else nothing."""
    return sentence if rng.random() < 0.5 else ""


def shopping(rng):
    name = rng.choice(NAMES)
    (item, unit), (other, other_unit) = rng.sample(STATIONERY, 2)
    count, price, other_count, other_price = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 6), rng.randint(3, 12)
    first, second = count * price, other_count * other_price
    spent = first + second
    money = rng.choice([m for m in (50, 100, 200) if m > spent])
    shop = maybe(rng, f"文具店里一共有{rng.randint(30, 90)}种商品。")
    question, verb = rng.choice([
        (f"{shop}{name}带了{money}元，买了{count}{unit}{item}，每{unit}{price}元，又买了{other_count}{other_unit}{other}，"
         f"每{other_unit}{other_price}元。{name}还剩多少元？", "还剩"),
        (f"{name}买了{count}{unit}{item}和{other_count}{other_unit}{other}，{item}每{unit}{price}元，{other}每{other_unit}"
         f"{other_price}元。{shop}{name}付了{money}元，应找回多少元？", "应找回")])
    steps = [f"买{item}：{count}×{price}={first}（元）", f"买{other}：{other_count}×{other_price}={second}（元）",
             f"一共花了：{first}+{second}={spent}（元）", f"{verb}：{money}-{spent}={money - spent}（元）"]
    return question, steps, f"{name}{verb}{money - spent}元。"


def two_leg_trip(rng):
    vehicle = rng.choice(VEHICLES)
    speed, hours, speed2, hours2 = rng.randint(4, 9) * 10, rng.randint(2, 4), rng.randint(4, 9) * 10, rng.randint(1, 3)
    remaining = rng.randint(10, 90)
    first, second = speed * hours, speed2 * hours2
    start = maybe(rng, f"早上{rng.randint(6, 9)}点，")
    question = (f"{start}一辆{vehicle}从甲地开往乙地，先以每小时{speed}千米的速度行驶了{hours}小时，"
                f"又以每小时{speed2}千米的速度行驶了{hours2}小时，这时离乙地还有{remaining}千米。"
                + rng.choice(["甲乙两地相距多少千米？", "甲地到乙地的路程是多少千米？"]))
    steps = [f"前{hours}小时行驶了{speed}×{hours}={first}（千米）", f"后{hours2}小时行驶了{speed2}×{hours2}={second}（千米）",
             f"一共行驶了{first}+{second}={first + second}（千米）",
             f"全程是{first + second}+{remaining}={first + second + remaining}（千米）"]
    return question, steps, f"甲乙两地相距{first + second + remaining}千米。"


def savings(rng):
    name = rng.choice(NAMES)
    goal, low, high = rng.choice(GOALS)
    start, weekly, weeks, spent = rng.randint(5, 40), rng.randint(3, 9), rng.randint(3, 8), rng.randint(5, 20)
    saved = weekly * weeks
    now = start + saved - spent
    price = rng.randint(max(low, now + 1), max(high, now + 10))
    age = maybe(rng, f"{name}今年{rng.randint(8, 12)}岁。")
    question = (f"{age}{name}原来有{start}元，每周存{weekly}元，存了{weeks}周后，花{spent}元买了文具。"
                + rng.choice([f"一个{goal}{price}元，{name}还差多少元才能买一个{goal}？",
                              f"{name}想买一个{price}元的{goal}，还差多少元？"]))
    steps = [f"{weeks}周存了{weekly}×{weeks}={saved}（元）", f"存完后有{start}+{saved}={start + saved}（元）",
             f"买文具后剩{start + saved}-{spent}={now}（元）", f"还差{price}-{now}={price - now}（元）"]
    return question, steps, f"还差{price - now}元。"


def family_ages(rng):
    name = rng.choice(NAMES)
    age, times, gap, years = rng.randint(5, 10), rng.randint(3, 5), rng.randint(1, 6), rng.randint(2, 9)
    father = age * times
    mother = father - gap
    now = age + father + mother
    height = maybe(rng, f"{name}身高{rng.randint(120, 150)}厘米，")
    question = (f"今年{height}{name}{age}岁，爸爸的年龄是{name}的{times}倍，妈妈比爸爸小{gap}岁。"
                + rng.choice([f"{years}年后，三人的年龄和是多少岁？", f"再过{years}年，他们三人一共多少岁？"]))
    steps = [f"爸爸今年{age}×{times}={father}（岁）", f"妈妈今年{father}-{gap}={mother}（岁）",
             f"三人今年一共{age}+{father}+{mother}={now}（岁）", f"每人长{years}岁，三人共长3×{years}={3 * years}（岁）",
             f"{years}年后一共{now}+{3 * years}={now + 3 * years}（岁）"]
    return question, steps, f"三人的年龄和是{now + 3 * years}岁。"


def fence(rng):
    field = rng.choice(FIELDS)
    width = rng.randint(4, 20)
    length, gate, price = width + rng.randint(2, 15), rng.randint(1, 3), rng.randint(2, 9)
    perimeter = (length + width) * 2
    path = maybe(rng, f"它的旁边有一条长{rng.randint(20, 80)}米的小路。")
    question = (f"一个长方形{field}长{length}米，宽{width}米。{path}沿着它的四周围篱笆，留出{gate}米宽的门不围，"
                + rng.choice([f"每米篱笆{price}元，一共要花多少元？", f"篱笆每米{price}元，围篱笆需要多少元？"]))
    steps = [f"周长是({length}+{width})×2={perimeter}（米）", f"要围的篱笆长{perimeter}-{gate}={perimeter - gate}（米）",
             f"需要{perimeter - gate}×{price}={(perimeter - gate) * price}（元）"]
    return question, steps, f"一共要花{(perimeter - gate) * price}元。"


def factory_boxes(rng):
    rate, rate2, hours, per_box = rng.randint(12, 30), rng.randint(12, 30), rng.randint(3, 8), rng.choice([5, 6, 8, 10])
    made = (rate + rate2) * hours
    defective = rng.randint(2, 15)
    defective += (made - defective) % per_box  # the good parts fill whole boxes
    good = made - defective
    workers = maybe(rng, f"车间里一共有{rng.randint(20, 60)}名工人，")
    question = (f"{workers}甲每小时做{rate}个零件，乙每小时做{rate2}个零件。两人都工作了{hours}小时，其中有{defective}个不合格。"
                + rng.choice([f"合格的零件每{per_box}个装一盒，可以装多少盒？", f"把合格的零件每盒装{per_box}个，能装满几盒？"]))
    steps = [f"甲做了{rate}×{hours}={rate * hours}（个）", f"乙做了{rate2}×{hours}={rate2 * hours}（个）",
             f"一共做了{rate * hours}+{rate2 * hours}={made}（个）", f"合格的有{made}-{defective}={good}（个）",
             f"可以装{good}÷{per_box}={good // per_box}（盒）"]
    return question, steps, f"可以装{good // per_box}盒。"


def discount(rng):
    name, garment = rng.choice(NAMES), rng.choice(CLOTHES)
    price, tenths, count = rng.randint(5, 30) * 10, rng.randint(5, 9), rng.randint(2, 5)
    sale = price * tenths // 10
    coupon = rng.choice([c for c in (10, 20, 30, 50) if c < sale * count])
    stock = maybe(rng, f"商店里还有{rng.randint(10, 90)}件这种{garment}。")
    question = (f"一件{garment}原价{price}元，现在打{tenths}折出售。{stock}{name}买了{count}件，又用了一张{coupon}元的优惠券，"
                + rng.choice(["一共要付多少元？", "实际付了多少元？"]))
    steps = [f"打折后每件{price}×{tenths}÷10={sale}（元）", f"{count}件要{sale}×{count}={sale * count}（元）",
             f"用券后付{sale * count}-{coupon}={sale * count - coupon}（元）"]
    return question, steps, f"一共要付{sale * count - coupon}元。"


def buses(rng):
    classes = [rng.randint(30, 48) for _ in range(3)]
    teachers, seats = rng.randint(3, 8), rng.choice([30, 35, 40, 45])
    people = sum(classes) + teachers
    full, left = divmod(people, seats)
    grade = maybe(rng, f"学校{rng.randint(3, 6)}年级")
    question = (f"{grade}三个班去春游，各班分别有{classes[0]}人、{classes[1]}人和{classes[2]}人，还有{teachers}名老师同去。"
                + rng.choice([f"每辆大巴坐{seats}人，至少要租多少辆大巴？", f"一辆大巴能坐{seats}人，最少租几辆才够？"]))
    steps = [f"学生有{classes[0]}+{classes[1]}+{classes[2]}={sum(classes)}（人）",
             f"一共有{sum(classes)}+{teachers}={people}（人）"]
    if left:
        steps += [f"{people}÷{seats}={full}（辆）……{left}（人）", f"剩下的人还要1辆，{full}+1={full + 1}（辆）"]
    else:
        steps += [f"{people}÷{seats}={full}（辆），正好坐满"]
    return question, steps, f"至少要租{full + (1 if left else 0)}辆大巴。"


def water_tank(rng):
    inflow, outflow = rng.randint(8, 20), rng.randint(2, 7)
    minutes = rng.randint(5, 30)
    already = rng.randint(10, 100)
    capacity = already + (inflow - outflow) * minutes
    depth = maybe(rng, f"水池深{rng.randint(2, 4)}米，")
    question = (f"一个水池能装{capacity}升水，{depth}现在已有{already}升。进水管每分钟进水{inflow}升，出水管每分钟放水{outflow}升。"
                + rng.choice(["两管同时打开，多少分钟能把水池装满？", "同时打开两根水管，要几分钟才能装满？"]))
    steps = [f"还要装{capacity}-{already}={capacity - already}（升）", f"每分钟实际进水{inflow}-{outflow}={inflow - outflow}（升）",
             f"需要{capacity - already}÷{inflow - outflow}={minutes}（分钟）"]
    return question, steps, f"{minutes}分钟能把水池装满。"


def reading_plan(rng):
    name = rng.choice(NAMES)
    days, per_day, days2, per_day2 = rng.randint(2, 6), rng.randint(8, 20), rng.randint(2, 6), rng.randint(10, 25)
    read = days * per_day + days2 * per_day2
    pages = read + rng.randint(10, 120)
    cost = maybe(rng, f"这本书定价{rng.randint(15, 45)}元。")
    question = (f"一本书共{pages}页，{cost}{name}前{days}天每天看{per_day}页，后{days2}天每天看{per_day2}页。"
                + rng.choice(["还剩多少页没看？", f"{name}还有多少页没有看？"]))
    steps = [f"前{days}天看了{days}×{per_day}={days * per_day}（页）", f"后{days2}天看了{days2}×{per_day2}={days2 * per_day2}（页）",
             f"一共看了{days * per_day}+{days2 * per_day2}={read}（页）", f"还剩{pages}-{read}={pages - read}（页）"]
    return question, steps, f"还剩{pages - read}页没看。"


def average_target(rng):
    name, subject = rng.choice(NAMES), rng.choice(SUBJECTS)
    while True:
        scores, target = [rng.randint(70, 98) for _ in range(4)], rng.randint(80, 92)
        if 0 <= 5 * target - sum(scores) <= 100:
            break
    needed = 5 * target - sum(scores)
    question = (f"{name}前四次{subject}测验的成绩是{scores[0]}分、{scores[1]}分、{scores[2]}分和{scores[3]}分。"
                + rng.choice([f"要使五次的平均分达到{target}分，第五次要考多少分？", f"第五次考多少分，五次的平均分才是{target}分？"]))
    steps = [f"五次的总分是{target}×5={5 * target}（分）",
             f"前四次一共{scores[0]}+{scores[1]}+{scores[2]}+{scores[3]}={sum(scores)}（分）",
             f"第五次要考{5 * target}-{sum(scores)}={needed}（分）"]
    return question, steps, f"第五次要考{needed}分。"


def chickens_and_rabbits(rng):
    chickens, rabbits = rng.randint(2, 30), rng.randint(2, 30)
    heads, legs = chickens + rabbits, 2 * chickens + 4 * rabbits
    question = rng.choice([f"笼子里有鸡和兔共{heads}只，共有{legs}条腿。鸡和兔各有多少只？",
                           f"鸡兔同笼，从上面数有{heads}个头，从下面数有{legs}条腿。鸡、兔各几只？"])
    steps = [f"假设全是鸡，有{heads}×2={2 * heads}（条）腿", f"多出{legs}-{2 * heads}={legs - 2 * heads}（条）腿",
             f"每只兔多2条腿，兔有{legs - 2 * heads}÷2={rabbits}（只）", f"鸡有{heads}-{rabbits}={chickens}（只）"]
    return question, steps, f"鸡有{chickens}只，兔有{rabbits}只。"


def fruit_bags(rng):
    fruit = rng.choice(FRUITS)
    boxes, per_box, per_bag = rng.randint(4, 12), rng.choice([10, 15, 20, 25]), rng.choice([2, 3, 4, 5])
    total = boxes * per_box
    sold = rng.randint(5, total // 2)
    sold += (total - sold) % per_bag
    bags = (total - sold) // per_bag
    price = maybe(rng, f"每千克{fruit}卖{rng.randint(4, 12)}元。")
    question = (f"水果店运来{boxes}箱{fruit}，每箱{per_box}千克，{price}卖出{sold}千克后，"
                + rng.choice([f"把剩下的装成每袋{per_bag}千克，可以装多少袋？", f"剩下的每{per_bag}千克装一袋，能装几袋？"]))
    steps = [f"一共运来{boxes}×{per_box}={total}（千克）", f"还剩{total}-{sold}={total - sold}（千克）",
             f"可以装{total - sold}÷{per_bag}={bags}（袋）"]
    return question, steps, f"可以装{bags}袋。"


FAMILIES = [shopping, two_leg_trip, savings, family_ages, fence, factory_boxes, discount, buses, water_tank,
            reading_plan, average_target, chickens_and_rabbits, fruit_bags]


def school_math_record(rng):
    question, steps, answer = rng.choice(FAMILIES)(rng)
    return {"instruction": f"题目：{question}", "input": "", "output": "\n".join(steps + [f"答：{answer}"])}
